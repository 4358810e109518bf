"""Benchmarks of the face tools on (by default 1080p) frames, CPU or GPU; :func:`bench_faces` is the entry point.

Paste-back: synthetic frames and crops with faces laid out in a row: the cost of pasting does not depend on
the pixels. Inputs already live on the device (as they do inside a video pipeline); the result is assembled
there too, so host transfers are not counted. The per-face cost is the difference to pasting the same
frames with no faces (which is the frame copy every paste pays), divided by the number of faces.

Detection: the whole :func:`~bfr_core.faces.detect_faces` call on a frame (shrink to the working size,
network, decoding, top-k, NMS, alignment). Random frames hold no faces, so what is measured is the
per-frame cost; the per-face part (NMS and a five-point fit for a handful of faces) is negligible.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .align import fit_similarity, invert_affine, template
from .container import Faces
from .paste import paste_faces

if TYPE_CHECKING:
    from .detect import FaceDetector

__all__ = ["synthetic_faces", "bench_paste", "bench_detect", "bench_faces"]


def synthetic_faces(frames: int, faces_per_frame: int, height: int, width: int, face_size: float, crop_size: int = 512) -> Faces:
    """Faces of ``face_size`` frame pixels (eye-to-mouth scale like a real face), spread along each frame."""
    ref = template(crop_size)
    k = face_size / (crop_size * 0.5)  # the template face spans about half the crop
    n = frames * faces_per_frame
    xs = (torch.arange(faces_per_frame).float() + 0.5) / faces_per_frame * width
    centre = torch.stack([xs, torch.full_like(xs, height / 2)], -1).repeat(frames, 1)
    pts = (ref - ref.mean(0)) * k + centre[:, None]
    affine = fit_similarity(pts, ref)
    lo, hi = pts.amin(1) - face_size / 2, pts.amax(1) + face_size / 2
    return Faces(torch.arange(frames).repeat_interleave(faces_per_frame), torch.cat([lo, hi], -1), pts, torch.ones(n),
                 affine, invert_affine(affine), height, width, frames, crop_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def bench_paste(*, device: torch.device | str = "cpu", height: int = 1080, width: int = 1920, frames: int = 1,
                faces_per_frame: int = 1, face_size: float = 300.0, crop_size: int = 512, color_match: str = "none",
                upscale: float = 1.0, repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Time :func:`paste_faces` and return medians/p90 in milliseconds plus the per-face cost.

    Returns a dict with ``ms_per_call`` (median), ``p90_ms``, ``ms_no_faces`` (same frames, no face),
    ``ms_per_face`` (the difference divided by the faces), ``ms_per_frame``, ``device`` and the settings.
    """
    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.rand(frames, height, width, 3, generator=g).to(dev)
    faces = synthetic_faces(frames, faces_per_frame, height, width, face_size, crop_size)
    crops = torch.rand(len(faces), crop_size, crop_size, 3, generator=g).to(dev)
    none = faces[torch.zeros(len(faces), dtype=torch.bool)]
    kw = dict(device=dev, output_device=dev, color_match=color_match, upscale=upscale, chunk=frames)
    with_faces = _time(lambda: paste_faces(images, crops, faces, **kw), dev, repeats, warmup)
    without = _time(lambda: paste_faces(images, crops[:0], none, **kw), dev, repeats, warmup)
    med, base = statistics.median(with_faces), statistics.median(without)
    p90 = sorted(with_faces)[min(len(with_faces) - 1, int(0.9 * len(with_faces)))]
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "frame": f"{width}x{height}",
        "frames": frames,
        "faces": len(faces),
        "face_size": face_size,
        "crop_size": crop_size,
        "color_match": color_match,
        "upscale": upscale,
        "ms_per_call": med,
        "p90_ms": p90,
        "ms_no_faces": base,
        "ms_per_frame": med / frames,
        "ms_per_face": max(0.0, med - base) / max(1, len(faces)),
        "ms_per_face_total": med / max(1, len(faces)),
    }


def bench_detect(detector: "FaceDetector | str | Path | None" = None, *, kind: str = "yunet", device: torch.device | str = "cpu",
                 height: int = 1080, width: int = 1920, frames: int = 1, max_side: int | None = 640, repeats: int = 5,
                 warmup: int = 1, seed: int = 0) -> dict:
    """Time :func:`~bfr_core.faces.detect_faces` on random frames; returns medians/p90 in milliseconds.

    ``detector``: a loaded detector, a weights file, or ``None`` for a random-weight detector of ``kind``
    (the cost of the network does not depend on its weights; its scores are ignored by an impossible
    threshold so the random candidates do not flood NMS). Keys: ``ms_per_call``, ``p90_ms``, ``ms_per_frame``,
    ``detector`` (its kind), ``weights`` (file name or ``"random"``), ``working_size`` and the settings.
    """
    from .detect import FaceDetector, build_detector, detect_faces, load_detector

    dev = torch.device(device)
    weights = "random"
    if detector is None:
        detector = build_detector(kind)
        threshold: float | None = 2.0
    elif not isinstance(detector, FaceDetector):
        weights = Path(detector).name
        detector = load_detector(detector)
        threshold = None
    else:
        weights, threshold = "given", None
    detector = detector.to(dev)
    g = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.rand(frames, height, width, 3, generator=g).to(dev)
    times = _time(lambda: detect_faces(images, detector, max_side=max_side, score_threshold=threshold, chunk=frames, device=dev),
                  dev, repeats, warmup)
    med = statistics.median(times)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "frame": f"{width}x{height}",
        "frames": frames,
        "detector": detector.kind,
        "weights": weights,
        "working_size": max_side or max(height, width),
        "ms_per_call": med,
        "p90_ms": sorted(times)[min(len(times) - 1, int(0.9 * len(times)))],
        "ms_per_frame": med / frames,
    }


def bench_faces(*, device: torch.device | str = "cpu", detector: "str | Path | None" = None, kind: str = "yunet",
                height: int = 1080, width: int = 1920, frames: int = 1, face_size: float = 300.0, repeats: int = 5,
                warmup: int = 1) -> dict:
    """The face-tool numbers for ``bfr bench`` (and the README): one flat dict of numbers and labels.

    ``paste_ms_per_face``: per-face paste cost on a ``width``×``height`` frame (no colour matching);
    ``paste_ms_per_face_color``: the same with ``mean_std`` colour matching; ``paste_ms_per_frame_4_faces``:
    a whole paste of four faces; ``paste_ms_no_faces``: the frame copy every paste pays;
    ``detect_ms_per_frame``: detection at a 640-pixel working size with ``detector`` (a weights file) or a
    random-weight detector of ``kind``. Every time is a median in milliseconds; ``frames`` frames per call.
    """
    common = dict(device=device, height=height, width=width, frames=frames, repeats=repeats, warmup=warmup)
    one = bench_paste(face_size=face_size, **common)
    color = bench_paste(face_size=face_size, color_match="mean_std", **common)
    four = bench_paste(face_size=face_size / 2, faces_per_frame=4, **common)
    det = bench_detect(detector, kind=kind, **common)
    return {
        "device": one["device"],
        "threads": one["threads"],
        "frame": one["frame"],
        "frames_per_call": frames,
        "face_size": face_size,
        "paste_ms_per_face": one["ms_per_face"],
        "paste_ms_per_face_color": color["ms_per_face"],
        "paste_ms_per_frame_4_faces": four["ms_per_frame"],
        "paste_ms_no_faces": one["ms_no_faces"] / frames,
        "detector": det["detector"],
        "detector_weights": det["weights"],
        "detect_working_size": det["working_size"],
        "detect_ms_per_frame": det["ms_per_frame"],
    }

"""Benchmark of the paste-back step: per-face cost on a (by default 1080p) frame, CPU or GPU.

Synthetic frames and crops with faces laid out in a row: the cost of pasting does not depend on the
pixels. Inputs already live on the device (as they do inside a video pipeline); the result is assembled
there too, so host transfers are not counted. The per-face cost is the difference to pasting the same
frames with no faces (which is the frame copy every paste pays), divided by the number of faces.
"""

from __future__ import annotations

import statistics
import time

import torch

from .align import fit_similarity, invert_affine, template
from .container import Faces
from .paste import paste_faces

__all__ = ["synthetic_faces", "bench_paste"]


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

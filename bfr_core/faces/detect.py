"""Face detection backends (RetinaFace from facexlib, YuNet from kornia, our MTCNN) batched over frames.

Both networks are built from their libraries' module classes, but never through the libraries' loading
helpers: those download into site-packages (facexlib) or the torch hub cache (kornia). Weights come from an
explicit file path given by the caller and are read with our safe loader (safetensors or
``torch.load(weights_only=True)``).

Anchors and box decoding are written here, vectorised over the batch, because facexlib decodes one image
at a time with NumPy NMS and kornia builds its anchors in a Python loop per call; NMS is torchvision's
``batched_nms`` over all frames of a chunk at once. MTCNN (:mod:`.mtcnn`) ships with the package
(``bfr_core/data/mtcnn_facenet_pytorch.safetensors``), so whole photos work offline.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from ..images import split_alpha
from ..progress import Progress
from .align import fit_similarity, invert_affine, template
from .chunks import run_chunked
from .container import Faces

log = logging.getLogger(__name__)

__all__ = ["DETECTOR_KINDS", "FaceDetector", "detector_kind_from_state_dict", "build_detector", "load_detector",
           "load_builtin_detector", "detect_faces"]

DETECTOR_KINDS = ("retinaface_resnet50", "retinaface_mobile0.25", "retinaface_mobile0.25_1mb", "yunet", "mtcnn")


@dataclass(frozen=True)
class _Anchors:
    """Anchor layout of an SSD-style head: one level per stride, several square anchor sizes per cell."""

    steps: tuple[int, ...]
    min_sizes: tuple[tuple[int, ...], ...]
    variance: tuple[float, float] = (0.1, 0.2)

    @property
    def multiple(self) -> int:
        return max(self.steps)


_RETINA = _Anchors(steps=(8, 16, 32), min_sizes=((16, 32), (64, 128), (256, 512)))
# biubug6/Face-Detector-1MB-with-landmark trained the same mobilenet0.25 RetinaFace layers with smaller
# anchors and plain ReLU: its weights load strictly into the same module but give wrong boxes and
# landmarks unless both are switched.
_RETINA_1MB = _Anchors(steps=(8, 16, 32), min_sizes=((10, 20), (32, 64), (128, 256)))
_YUNET = _Anchors(steps=(8, 16, 32, 64), min_sizes=((10, 16, 24), (32, 48), (64, 96), (128, 192, 256)))
_ANCHORS = {"retinaface_resnet50": _RETINA, "retinaface_mobile0.25": _RETINA, "retinaface_mobile0.25_1mb": _RETINA_1MB, "yunet": _YUNET}

# Default confidence thresholds per backend (their scores are calibrated differently), chosen so that
# the shared test photos give no false positives at a 640-pixel working size.
_DEFAULT_THRESHOLD = {"retinaface_resnet50": 0.9, "retinaface_mobile0.25": 0.9, "retinaface_mobile0.25_1mb": 0.9, "yunet": 0.6,
                      "mtcnn": 0.9}

# Files whose parameter names cannot tell their anchor layout apart, recognised by content (sha256).
_KNOWN_FILES = {
    "ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1": "retinaface_mobile0.25_1mb",
}


def _priors(spec: _Anchors, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(P, 4) anchors ``cx, cy, sw, sh`` normalised by the (padded) input size, in the heads' output order."""
    out = []
    for step, sizes in zip(spec.steps, spec.min_sizes):
        fh, fw = h // step, w // step
        ys, xs = torch.meshgrid(torch.arange(fh, device=device), torch.arange(fw, device=device), indexing="ij")
        cx = ((xs + 0.5) * step / w)[..., None].expand(fh, fw, len(sizes))
        cy = ((ys + 0.5) * step / h)[..., None].expand(fh, fw, len(sizes))
        s = torch.tensor(sizes, device=device, dtype=torch.float32)
        sw, sh = (s / w).expand(fh, fw, -1), (s / h).expand(fh, fw, -1)
        out.append(torch.stack([cx, cy, sw, sh], -1).reshape(-1, 4))
    return torch.cat(out).float()


def _decode(loc: torch.Tensor, landm: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets (B, P, 4) and (B, P, 10) → corner boxes (B, P, 4) and landmarks (B, P, 5, 2), normalised."""
    c, s = priors[:, :2], priors[:, 2:]
    centre = c + loc[..., :2] * variance[0] * s
    size = s * torch.exp(loc[..., 2:4] * variance[1])
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    pts = c[:, None] + landm.unflatten(-1, (5, 2)) * variance[0] * s[:, None]
    return boxes, pts


class FaceDetector(nn.Module):
    """A detection network plus its input convention and anchor decoding.

    ``forward`` takes RGB (B, 3, H, W) in [0, 1] and returns, for every anchor, boxes (B, P, 4) and
    landmarks (B, P, 5, 2) in input pixels and a score (B, P) in [0, 1]. :func:`detect_faces` turns that
    into a :class:`Faces` record.
    """

    def __init__(self, kind: str, net: nn.Module) -> None:
        super().__init__()
        if kind not in DETECTOR_KINDS:
            raise InputError(f"unknown face detector {kind!r}; choose one of {', '.join(DETECTOR_KINDS)}.")
        self.kind = kind
        self.net = net.eval()
        self.anchors = _ANCHORS.get(kind)  # None for MTCNN, which proposes its own boxes
        # RetinaFace was trained on BGR 0..255 minus the Caffe means; YuNet on BGR 0..255 (MTCNN normalises itself).
        mean = [104.0, 117.0, 123.0] if kind.startswith("retinaface") else [0.0, 0.0, 0.0]
        self.register_buffer("bgr_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self._prior_cache: dict[tuple, torch.Tensor] = {}
        self.requires_grad_(False)

    @property
    def default_threshold(self) -> float:
        return _DEFAULT_THRESHOLD[self.kind]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def priors(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._prior_cache:
            self._prior_cache[key] = _priors(self.anchors, h, w, device)
        return self._prior_cache[key]

    @torch.inference_mode()
    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.kind == "mtcnn":
            from .mtcnn import mtcnn_detect

            return mtcnn_detect(self.net, rgb)
        b, _, h, w = rgb.shape
        m = self.anchors.multiple
        ph, pw = -(-h // m) * m, -(-w // m) * m
        x = rgb.flip(1) * 255.0 - self.bgr_mean
        x = F.pad(x, (0, pw - w, 0, ph - h)).to(self.dtype)  # pad right/bottom: coordinates do not move
        if self.kind == "yunet":
            out = self.net(x)
            loc, conf, iou = out["loc"].float(), out["conf"].float(), out["iou"].float()
            score = (conf[..., 1] * iou[..., 0].clamp(0.0, 1.0)).sqrt()
            box_off, lm_off = loc[..., :4], loc[..., 4:14]
        else:
            box_off, conf, lm_off = (t.float() for t in self.net(x))
            score = conf[..., 1]
        boxes, pts = _decode(box_off, lm_off, self.priors(ph, pw, x.device), self.anchors.variance)
        scale = torch.tensor([pw, ph], device=x.device, dtype=torch.float32)
        return boxes * scale.repeat(2), pts * scale, score


def detector_kind_from_state_dict(sd: Mapping[str, torch.Tensor]) -> str:
    """Tell the supported detectors apart by their parameter names."""
    keys = set(sd)
    if any(k.startswith("pnet.") for k in keys) and any(k.startswith("onet.") for k in keys):
        return "mtcnn"
    if any(k.startswith("model0.") for k in keys) and any(k.startswith("head.") for k in keys):
        return "yunet"
    if any(k.startswith("body.stage1.") for k in keys):
        return "retinaface_mobile0.25"  # or its _1mb anchor variant: the keys are identical
    if any(k.startswith("body.layer1.") for k in keys):
        return "retinaface_resnet50"
    sample = ", ".join(sorted(keys)[:4])
    raise WeightsError(
        f"this file is not a RetinaFace (resnet50 / mobilenet0.25), YuNet or MTCNN face detector (first keys: {sample}). "
        "Use detection_Resnet50_Final.pth, detection_mobilenet0.25_Final.pth, yunet_final.pth or the packaged "
        "mtcnn_facenet_pytorch.safetensors."
    )


def _make_net(kind: str) -> nn.Module:
    if kind == "mtcnn":
        from ..models.mtcnn import MTCNN

        return MTCNN()
    if kind == "yunet":
        from kornia.models.yunet.model import YuNet

        return YuNet("test", pretrained=False)
    try:
        from facexlib.detection.retinaface import RetinaFace
    except ImportError as e:
        raise WeightsError(
            f"the RetinaFace detector needs the facexlib package ({e}); install it with `pip install facexlib`, "
            "or use the YuNet detector, which needs only kornia."
        ) from e
    with warnings.catch_warnings():  # torchvision's deprecation notice for resnet50(pretrained=False)
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="resnet50" if kind.endswith("resnet50") else "mobile0.25", phase="test", device="cpu")
    if kind == "retinaface_mobile0.25_1mb":
        # the 1MB variant was trained with plain ReLU where facexlib's layers use LeakyReLU(0.1)
        for m in net.modules():
            if isinstance(m, nn.LeakyReLU):
                m.negative_slope = 0.0
    return net


def build_detector(kind: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> FaceDetector:
    """Build a detector of ``kind``; load ``state_dict`` strictly when given (random weights otherwise, for tests)."""
    if kind not in DETECTOR_KINDS:
        raise InputError(f"unknown face detector {kind!r}; choose one of {', '.join(DETECTOR_KINDS)}.")
    net = _make_net(kind)
    if state_dict is not None:
        sd = {k[7:] if k.startswith("module.") else k: v for k, v in state_dict.items()}
        try:
            missing, unexpected = net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise WeightsError(f"the weights do not fit the {kind} detector: {str(e).splitlines()[-1].strip()}") from None
        if missing or unexpected:
            raise WeightsError(
                f"the weights do not fit the {kind} detector: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). Check that the file is the {kind} checkpoint."
            )
    return FaceDetector(kind, net)


def load_detector(weights: str | Path, kind: str = "auto", device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> FaceDetector:
    """Build a detector from a weights file (kind inferred from its keys when ``kind='auto'``).

    The file is read only through safetensors or ``torch.load(weights_only=True)``; nothing is downloaded.
    ``retinaface_mobile0.25`` and ``retinaface_mobile0.25_1mb`` share parameter names; ``auto`` picks the
    1MB anchors only for the known Face-Detector-1MB file, so name the kind for other copies of it.
    """
    from ..weights.fetch import sha256_file
    from ..weights.files import load_checkpoint

    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"face detector weights not found at {path}; put the file there (ComfyUI: models/facedetection).")
    sd = load_checkpoint(path).tensors
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    found = detector_kind_from_state_dict(sd)
    if found == "retinaface_mobile0.25":
        if kind == "retinaface_mobile0.25_1mb":
            found = kind
        elif kind == "auto":
            found = _KNOWN_FILES.get(sha256_file(path), found)
    if kind != "auto" and kind != found:
        raise WeightsError(f"{path.name} holds a {found} detector, not {kind}; pick detector '{found}' or the matching file.")
    return build_detector(found, sd).to(device=device, dtype=dtype)


def load_builtin_detector(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> FaceDetector:
    """The MTCNN detector shipped in ``bfr_core/data`` (registry id ``mtcnn``, MIT): no download, works offline."""
    from ..weights.fetch import resolve

    return load_detector(resolve("mtcnn", allow_download=False)[0], device=device, dtype=dtype)


@torch.inference_mode()
def detect_faces(
    images: torch.Tensor,
    detector: FaceDetector,
    *,
    max_side: int | None = 640,
    score_threshold: float | None = None,
    nms_threshold: float = 0.4,
    crop_size: int = 512,
    max_candidates: int = 750,
    chunk: int = 8,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> Faces:
    """Detect faces in an IMAGE batch (B, H, W, C) and fit their alignment to the FFHQ template.

    Frames are shrunk so the longest side is at most ``max_side`` (``None``: full size) before detection,
    which bounds the cost on large images; boxes and landmarks are mapped back to the original frame.
    Frames are detected ``chunk`` at a time on ``device`` (the detector's by default), halving the chunk
    on CUDA out-of-memory. Returns faces grouped by frame, highest score first within a frame; frames with
    no face simply have none (see :meth:`Faces.frames_without_faces`).
    """
    rgb, _ = split_alpha(images)
    b, h, w, _ = rgb.shape
    if h < 1 or w < 1:
        raise InputError(f"the image is {w}×{h} pixels; face detection needs a non-empty image.")
    dev = torch.device(device) if device is not None else detector.bgr_mean.device
    if detector.bgr_mean.device != dev:
        detector = detector.to(dev)
    thr = detector.default_threshold if score_threshold is None else float(score_threshold)
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
    ref = template(crop_size, device=dev)
    if b == 0:
        return Faces.empty(h, w, 0, crop_size)
    parts: list[Faces] = []

    def run(start: int, stop: int) -> None:
        x = rgb[start:stop].to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        if (dh, dw) != (h, w):
            x = F.interpolate(x, size=(dh, dw), mode="bilinear", antialias=True, align_corners=False)
        boxes, pts, score = detector(x)
        k = min(max_candidates, score.shape[1])
        score, top = score.topk(k, dim=1)
        boxes = boxes.gather(1, top[..., None].expand(-1, -1, 4))
        pts = pts.gather(1, top[..., None, None].expand(-1, -1, 5, 2))
        frame_idx, cand = torch.nonzero(score > thr, as_tuple=True)  # one host sync per chunk
        boxes, pts, score = boxes[frame_idx, cand], pts[frame_idx, cand], score[frame_idx, cand]
        from torchvision.ops import batched_nms

        keep = batched_nms(boxes, score, frame_idx, nms_threshold)  # score-descending
        keep = keep[torch.sort(frame_idx[keep], stable=True).indices]
        sx, sy = dw / w, dh / h  # detector pixels per frame pixel; detections are divided by it, as facexlib does
        unscale = torch.tensor([1 / sx, 1 / sy], device=dev)
        boxes = boxes[keep] * unscale.repeat(2)
        pts = pts[keep] * unscale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        affine = fit_similarity(pts, ref)
        parts.append(Faces(frame_idx[keep].cpu() + start, boxes.cpu(), pts.cpu(), score[keep].cpu(), affine.cpu(),
                           invert_affine(affine).cpu(), h, w, b, crop_size))
        if progress is not None:
            progress.step(stop - start)

    run_chunked(run, b, chunk, device=dev)
    faces = Faces.cat(parts, stack_frames=False)
    log.debug("detected %s", faces.describe())
    return faces

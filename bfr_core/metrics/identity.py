"""Identity similarity: the cosine between face embeddings of the restored and the reference image.

Any embedder works: a callable from (B, 3, H, W) RGB in [0, 1] to (B, D) plus a name, so results
always say which network measured them (cosines from different networks are not comparable).
The default is insightface's ArcFace (``bfr_core.models.arcface``, weights ``arcface-ms1mv3-r50``,
non-commercial licence), fed the whole aligned crop resized to 112×112 as PGDiff does. The optional
alternative :func:`dlib_embedder` is dlib's CC0 128-d ResNet (needs ``pip install dlib-bin`` and
``python -m bfr_core.metrics dlib --download``), usable where ArcFace's weights are not.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, WeightsError
from ._precision import ieee_fp32
from .full_reference import check_images

__all__ = ["Embedder", "arcface_embedder", "dlib_embedder", "identity_similarity", "IdentityMetric"]

ARCFACE_DEFAULT = "arcface-ms1mv3-r50"


@dataclass
class Embedder:
    """A face-embedding network as a callable ``(B, 3, H, W) in [0, 1] -> (B, D)``, with a name for reports."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


def _arcface_name(model: torch.nn.Module, source: str) -> str:
    layers = getattr(getattr(model, "config", None), "layers", None)
    depth = f"iresnet{2 * sum(layers) + 2}" if layers else type(model).__name__
    return f"ArcFace {depth} ({source}), whole crop resized to 112x112"


def arcface_embedder(model: torch.nn.Module | str | os.PathLike = ARCFACE_DEFAULT, *,
                     device: torch.device | str | None = None, allow_download: bool = False,
                     source: str | None = None) -> Embedder:
    """An :class:`Embedder` from an ArcFace ``IResNet`` or from a checkpoint (path or registry id).

    Checkpoints load through :func:`bfr_core.weights.load_model` (safe loading, licence notice logged);
    nothing is downloaded unless ``allow_download``.
    """
    from ..device import resolve_device

    if not isinstance(model, torch.nn.Module):
        from ..weights import load_model

        loaded = load_model(model, "arcface_iresnet", device=resolve_device(device), allow_download=allow_download)
        source = source or loaded.path.name
        model = loaded.model
    net = model.eval()
    dev = next(net.parameters()).device

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        with ieee_fp32():
            return net.embed(images.to(dev, torch.float32).clamp(0, 1) * 2 - 1)

    return Embedder(embed, _arcface_name(net, source or "in-memory model"))


def _dlib_model_files(models_dir: str | os.PathLike | None) -> dict[str, Path]:
    from .assets import DLIB_MODELS_SHA256, _installed_package_dir, dlib_models_dir

    candidates = [Path(models_dir)] if models_dir is not None else [dlib_models_dir()]
    pkg = _installed_package_dir("face_recognition_models") if models_dir is None else None
    if pkg is not None:
        candidates.append(pkg / "models")
    for d in candidates:
        files = {n: d / n for n in DLIB_MODELS_SHA256}
        if all(f.is_file() for f in files.values()):
            for n, f in files.items():  # dlib parses these in C++: only the pinned files are handed to it
                if hashlib.sha256(f.read_bytes()).hexdigest() != DLIB_MODELS_SHA256[n]:
                    raise WeightsError(f"{f} is not the pinned face_recognition_models 0.3.0 file (sha256 differs).")
            return files
    raise WeightsError("dlib's face-recognition models not found: run `python -m bfr_core.metrics dlib --download` "
                       "(fetches face_recognition_models 0.3.0, 100 MB, CC0) or pass models_dir=.")


def dlib_embedder(models_dir: str | os.PathLike | None = None, *, jitters: int = 0) -> Embedder:
    """dlib's 128-d face-recognition ResNet (CC0) as an :class:`Embedder`; runs on the CPU, image by image.

    Each face is found by dlib's HOG detector (the largest box; the central part of the crop when it
    finds none, as on some aligned crops), aligned by the 5-point model to dlib's 150×150 chip, and
    embedded. Hand-wired rather than through ``face_recognition`` to avoid its extra dependencies.
    """
    try:
        import dlib
    except ImportError as e:
        raise WeightsError("the dlib identity network needs dlib: pip install dlib-bin") from e
    files = _dlib_model_files(models_dir)
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(files["shape_predictor_5_face_landmarks.dat"]))
    net = dlib.face_recognition_model_v1(str(files["dlib_face_recognition_resnet_model_v1.dat"]))

    def embed(images: torch.Tensor) -> torch.Tensor:
        arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for img in arr:
            img = np.ascontiguousarray(img)
            h, w = img.shape[:2]
            boxes = sorted(detector(img, 0), key=lambda r: r.area(), reverse=True)
            box = boxes[0] if boxes else dlib.rectangle(int(0.2 * w), int(0.2 * h), int(0.8 * w), int(0.85 * h))
            out.append(np.asarray(net.compute_face_descriptor(img, landmarks(img, box), jitters), dtype=np.float32))
        return torch.from_numpy(np.stack(out)).to(images.device)

    return Embedder(embed, "dlib face_recognition_resnet_model_v1 (128-d, CC0), HOG box + 5-point alignment")


def identity_similarity(restored: torch.Tensor, reference: torch.Tensor, embedder: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(B,) cosine similarity of the two images' embeddings, in [-1, 1]; higher means more alike."""
    check_images(restored, "restored")
    check_images(reference, "reference")
    if restored.shape[0] != reference.shape[0]:
        raise InputError(f"identity similarity pairs images one to one; got {restored.shape[0]} restored and {reference.shape[0]} references.")
    both = embedder(torch.cat([restored, reference.to(restored.device)], 0)) if restored.shape == reference.shape \
        else torch.cat([embedder(restored), embedder(reference.to(restored.device))], 0)
    a, b = both.float().chunk(2, 0)
    return F.cosine_similarity(a, b, dim=1)


@dataclass
class IdentityMetric:
    """Callable ``(restored, reference) -> (B,)`` cosine similarities; ``name`` says which network measured them."""

    embedder: Embedder

    @classmethod
    def load(cls, spec: str | os.PathLike = ARCFACE_DEFAULT, device: torch.device | str | None = None,
             allow_download: bool = False) -> "IdentityMetric":
        """ArcFace from a checkpoint (path or registry id), or ``spec="dlib"`` for dlib's CC0 network."""
        if str(spec) == "dlib":
            return cls(dlib_embedder())
        return cls(arcface_embedder(spec, device=device, allow_download=allow_download))

    @property
    def name(self) -> str:
        return self.embedder.name

    def __call__(self, restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return identity_similarity(restored, reference, self.embedder)

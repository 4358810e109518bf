"""The built-in compact restorer as a :class:`~bfr_core.pipelines.base.FaceRestorer`: one forward pass per chunk.

Its weights ship inside the package (``bfr_core/data/compact_restorer.safetensors``, see the model card
beside them), so ``bfr restore`` and the ComfyUI loader work with no download. The network is
deterministic: the seed is accepted for the common interface and has no effect.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch

from ..device import resolve_device, resolve_dtype
from ..errors import WeightsError
from ..models.compact import CompactRestorer
from ..progress import Progress
from .base import autocast, check_faces

log = logging.getLogger(__name__)

__all__ = ["BUILTIN_WEIGHTS", "BUILTIN_ENV", "LICENCE_NOTICE", "CompactPipeline", "builtin_weights", "load_compact"]

#: The shipped weights (package data) and their model card; ``BFR_COMPACT_WEIGHTS`` (a file) replaces them.
BUILTIN_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "compact_restorer.safetensors"
BUILTIN_ENV = "BFR_COMPACT_WEIGHTS"
LICENCE_NOTICE = ("compact restorer (built in): trained on FFHQ and CelebA-HQ faces, whose terms allow non-commercial "
                  "use only; see bfr_core/data/compact_restorer.md.")


def builtin_weights() -> Path:
    """The built-in weights file (``$BFR_COMPACT_WEIGHTS`` when set), or a clear error if it is missing."""
    override = os.environ.get(BUILTIN_ENV)
    path = Path(override).expanduser() if override else BUILTIN_WEIGHTS
    if not path.is_file():
        where = f"${BUILTIN_ENV} names {path}, which does not exist" if override else f"{path} is not in this installation"
        raise WeightsError(
            f"the built-in compact restorer is missing: {where}. Reinstall the package (the file ships inside it), "
            f"set {BUILTIN_ENV} to a compact_restorer .safetensors file, or pass one with --model "
            "(train one with trainer/configs/compact_restorer.yaml)."
        )
    return path


class CompactPipeline:
    """The compact restorer on one device; aligned crops (B, 3, size, size) in [-1, 1] in, restored crops out."""

    name = "compact"

    def __init__(self, model: CompactRestorer, *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = "auto"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device, torch.float32).eval().requires_grad_(False)
        self.size = int(model.config.size)

    @torch.no_grad()
    def restore(self, faces: torch.Tensor) -> torch.Tensor:
        """Restore one chunk (B, 3, size, size) → same shape, float32, clamped to [-1, 1]."""
        faces = check_faces(faces, self.size, "the compact restorer", self.device)
        with autocast(self.device, self.dtype):
            out = self.model(faces)
        return out.float().clamp(-1.0, 1.0)

    def restore_faces(self, faces: torch.Tensor, seed: int = 0, *, batch_size: int | None = None,
                      on_progress: Callable | None = None, check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """The FaceRestorer interface: ``batch_size`` faces at a time (default: all); ``seed`` has no effect."""
        faces = check_faces(faces, self.size, "the compact restorer", self.device)
        total = faces.shape[0]
        if total == 0:
            return faces.clone()
        chunk = max(1, int(batch_size or total))
        progress = Progress(-(-total // chunk), on_progress, check_cancel)
        out = []
        for lo in range(0, total, chunk):
            progress.cancel_point()
            restored = self.restore(faces[lo:lo + chunk])
            out.append(restored)
            progress.step(preview=restored)
        return torch.cat(out)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]


def load_compact(weights: str | os.PathLike | None = None, *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = "auto") -> CompactPipeline:
    """The compact restorer from ``weights`` (a file or model-folder name; default: the built-in file)."""
    from ..weights import load_model

    spec = weights if weights is not None else builtin_weights()
    loaded = load_model(spec, "compact_restorer", allow_download=False)
    log.info("BFR: %s", LICENCE_NOTICE if weights is None else loaded.licence_notice)
    return CompactPipeline(loaded.model, device=device, dtype=dtype)

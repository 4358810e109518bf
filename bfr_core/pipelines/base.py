"""What every restoration method offers to face tools (FaceDetectCrop → restore → FacePasteBack, `bfr restore`).

A restorer takes aligned square crops (B, 3, size, size) in [-1, 1] and returns restored crops of the same
shape and range. Randomness is seeded per face (face i of a call has its own stream), so batching and
chunking never change a face's result.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class FaceRestorer(Protocol):
    #: Short name for logs and reports ("vspbfr", "pgdiff", "pltrans", "compact").
    name: str
    #: Side of the aligned crops it restores (512 for the official models).
    size: int

    def restore_faces(self, faces: torch.Tensor, seed: int = 0, *, batch_size: int | None = None,
                      on_progress: Callable | None = None, check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """Restore aligned crops (B, 3, size, size) in [-1, 1]; ``on_progress(done, total, preview)``.

        An empty batch (B = 0) returns an empty batch: a photo without faces is not an error here.
        """
        ...

    def modules(self) -> list[torch.nn.Module]:
        """The networks it runs, so a host (ComfyUI's memory manager) can place and offload them."""
        ...


def check_faces(faces: torch.Tensor, size: int, method: str, device: torch.device) -> torch.Tensor:
    """Validate aligned crops (B, 3, size, size) in [-1, 1] and move them to ``device`` as float32."""
    from ..errors import InputError

    if not isinstance(faces, torch.Tensor) or faces.ndim != 4 or faces.shape[1:] != (3, size, size):
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise InputError(f"{method} restores aligned face crops (batch, 3, {size}, {size}) in [-1, 1]; "
                         f"got {shape}. Detect and align the faces first (or resize the crops to {size}).")
    if not faces.is_floating_point():
        raise InputError("face crops must be a floating-point tensor in [-1, 1]")
    return faces.to(device, torch.float32)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the heavy layers when ``dtype`` is below float32 (weights stay float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

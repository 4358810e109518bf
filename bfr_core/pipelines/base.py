"""What every restoration method offers to face tools (FaceDetectCrop → restore → FacePasteBack, `bfr restore`).

A restorer takes aligned square crops (B, 3, size, size) in [-1, 1] and returns restored crops of the same
shape and range. Randomness is seeded per face (face i of a call has its own stream), so batching and
chunking never change a face's result.
"""

from __future__ import annotations

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
        """Restore aligned crops (B, 3, size, size) in [-1, 1]; ``on_progress(done, total, preview)``."""
        ...

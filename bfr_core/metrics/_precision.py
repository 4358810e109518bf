"""Metric networks run in true float32: PyTorch lets cuDNN use TF32 for convolutions by default on
Ampere and newer GPUs, which moves LPIPS by ~1e-4 and Inception features by ~3e-3 (measured on an H100)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Disable TF32 for convolutions and matmuls inside the block, restoring the caller's settings after."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    old = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = old

"""Device and precision policy: bf16 on CUDA by default, fp32 on the CPU, always overridable."""

from __future__ import annotations

import torch

from .errors import InputError

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → the first CUDA device when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was requested but this torch build sees no CUDA GPU; use device='cpu'.")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` → bf16 on a CUDA device that supports it, fp16 on other accelerators, fp32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InputError(f"unknown precision {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}.") from None

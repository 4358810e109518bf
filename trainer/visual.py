"""Sample grids: one row per face, one column per image kind (degraded | restored | target)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .checkpoint import usual_mode


def make_grid(columns: dict[str, torch.Tensor], pad: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 grid of (B, 3, h, w) tensors in [-1, 1]; columns are resized to the first's size."""
    import torch.nn.functional as F

    tensors = [c.detach().float().cpu() for c in columns.values()]
    h, w = tensors[0].shape[-2:]
    tensors = [t if t.shape[-2:] == (h, w) else F.interpolate(t, (h, w), mode="bilinear", antialias=True) for t in tensors]
    rows = min(t.shape[0] for t in tensors)
    grid = torch.ones(3, rows * (h + pad) + pad, len(tensors) * (w + pad) + pad)
    for j, t in enumerate(tensors):
        for i in range(rows):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y: y + h, x: x + w] = (t[i].clamp(-1, 1) + 1) / 2
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(columns: dict[str, torch.Tensor], path: Path) -> np.ndarray:
    """Write the grid as PNG (atomically) and return it."""
    arr = make_grid(columns)
    _save_png(arr, path)
    return arr


def save_image(image: torch.Tensor, path: Path) -> None:
    """Write one (3, H, W) image in [-1, 1] as PNG (atomically)."""
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    _save_png(arr, path)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    usual_mode(tmp)
    try:
        Image.fromarray(arr).save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

"""Reading and writing image files for the command line (ComfyUI has its own loaders).

Images come back in the IMAGE convention ((1, H, W, C) float in [0, 1], C = 3 or 4), with EXIF rotation
applied and 16-bit, palette and grayscale files normalised. Writes are atomic and never replace an
existing file unless asked to.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def list_images(inputs: Iterable[str | os.PathLike], recursive: bool = True) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image among ``inputs`` (files or folders), sorted."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{p} is not an image file this tool reads ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            found.append((p, Path(p.name)))
        elif p.is_dir():
            walker: Iterator[Path] = p.rglob("*") if recursive else p.glob("*")
            found += sorted((f, f.relative_to(p)) for f in walker if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise InputError(f"input not found: {p}")
    return found


def load_image(path: str | os.PathLike, keep_alpha: bool = False) -> torch.Tensor:
    """An image file as IMAGE (1, H, W, 3) — or (1, H, W, 4) with ``keep_alpha`` when it has alpha."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode.startswith("I;16") else max(1.0, float(np.asarray(im).max())))
                arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                im = im.convert("RGBA" if (has_alpha and keep_alpha) else "RGB")
                arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"could not read {path} as an image ({e}); the file is damaged or not an image.") from e
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def save_image(image: torch.Tensor, path: str | os.PathLike, overwrite: bool = False, quality: int = 95) -> Path:
    """Write the first image of an IMAGE tensor; refuses to replace an existing file unless ``overwrite``."""
    from PIL import Image

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image[0] if image.dim() == 4 else image
    arr = (img.detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
        Image.fromarray(arr).save(tmp, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

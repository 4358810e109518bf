"""Image and mask conventions shared by the core, the nodes and the command line.

ComfyUI passes IMAGE as (B, H, W, C) float in [0, 1] on the CPU and MASK as (B, H, W). Models take
(B, C, H, W) in [-1, 1] on their device. Everything that crosses that line goes through this module,
which also turns odd inputs (grayscale, RGBA, NaNs, wrong ranks) into clear errors or clean RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = [
    "check_image",
    "split_alpha",
    "merge_alpha",
    "to_model",
    "from_model",
    "check_mask",
    "mask_to_model",
]


def check_image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate an IMAGE-convention tensor and return it as float (B, H, W, C) with C in 1..4.

    Accepts an unbatched (H, W, C) tensor. Values are clamped to [0, 1]; NaN or infinite values are an
    error, because restoring them would silently produce black or white faces.
    """
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor in ComfyUI IMAGE layout (B, H, W, C), got {type(image).__name__}.")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise InputError(f"{name} must have shape (B, H, W, C); got {tuple(image.shape)}.")
    if image.shape[-1] not in (1, 2, 3, 4):
        raise InputError(
            f"{name} has {image.shape[-1]} channels in its last dimension; IMAGE tensors are (B, H, W, C) with C = 1..4. "
            "If this is a (B, C, H, W) tensor, permute it to channels-last first."
        )
    if not image.is_floating_point():
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if not image.numel():
        return image
    lo, hi = torch.aminmax(image)  # one pass: NaN and inf show up in the extremes
    if not torch.isfinite(lo + hi):
        bad = (~torch.isfinite(image)).sum().item()
        raise InputError(
            f"{name} contains {bad} NaN or infinite values; the node that produced it failed. "
            "Check the upstream node (or its precision setting) and run again."
        )
    return image.clamp(0.0, 1.0) if (lo < 0 or hi > 1) else image


def split_alpha(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (RGB (B, H, W, 3), alpha (B, H, W) or None) from a gray, gray+alpha, RGB or RGBA IMAGE."""
    image = check_image(image)
    c = image.shape[-1]
    alpha = image[..., -1] if c in (2, 4) else None
    color = image[..., : (1 if c <= 2 else 3)]
    if color.shape[-1] == 1:
        color = color.expand(*color.shape[:-1], 3)
    return color.contiguous(), alpha


def merge_alpha(rgb: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """Re-attach an alpha channel split off by :func:`split_alpha`, resizing it if the image was rescaled."""
    if alpha is None:
        return rgb
    if alpha.shape[-2:] != rgb.shape[1:3]:
        alpha = F.interpolate(alpha[:, None].float(), size=rgb.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
    return torch.cat([rgb, alpha.to(rgb)[..., None]], dim=-1)


def to_model(image: torch.Tensor, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """IMAGE (B, H, W, C) in [0, 1] → model tensor (B, 3, H, W) in [-1, 1] on ``device``.

    Grayscale is expanded to three channels and alpha is dropped (use :func:`split_alpha` to keep it).
    """
    rgb, _ = split_alpha(image)
    x = rgb.to(device=device, dtype=dtype, non_blocking=True).permute(0, 3, 1, 2)
    return (x * 2.0 - 1.0).contiguous()


def from_model(x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Model tensor (B, 3, H, W) in [-1, 1] → IMAGE (B, H, W, 3) float32 in [0, 1] on ``device`` (CPU by default)."""
    if x.dim() != 4:
        raise InputError(f"expected a (B, C, H, W) model tensor, got shape {tuple(x.shape)}")
    out = ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)
    return out.to(device).contiguous()


def check_mask(mask: torch.Tensor, batch: int, height: int, width: int, name: str = "mask") -> torch.Tensor:
    """Validate a MASK (B, H, W) and fit it to an image batch: broadcast B=1, resize to (H, W).

    ComfyUI's LoadImage returns a 64×64 zero mask for images without alpha, so a size mismatch is
    normal and is resolved by bilinear resizing rather than refused.
    """
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor (B, H, W), got {type(mask).__name__}.")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.dim() != 3:
        raise InputError(f"{name} must have shape (B, H, W); got {tuple(mask.shape)}.")
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise InputError(f"{name} contains NaN or infinite values; check the node that produced it.")
    if mask.shape[0] not in (1, batch):
        raise InputError(f"{name} has batch {mask.shape[0]} but the image batch is {batch}; pass one mask or one per image.")
    if mask.shape[1:] != (height, width):
        mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return mask.expand(batch, height, width).clamp(0.0, 1.0).contiguous()


def mask_to_model(mask: torch.Tensor, batch: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """MASK (B, H, W) → (B, 1, H, W) in [0, 1] on ``device``, fitted to the image size."""
    return check_mask(mask, batch, height, width).to(device=device, dtype=dtype)[:, None]


def fit_square(x: torch.Tensor, size: int, what: str = "face crops") -> torch.Tensor:
    """Resize square model tensors (B, C, s, s) to ``size`` (antialiased bicubic); other shapes are an error.

    Restorers take aligned square crops; a 256 or 1024 crop is resized, but a whole photo is refused with
    the fix (detect and align the faces first), because stretching it would restore nothing.
    """
    h, w = x.shape[-2:]
    if h != w:
        raise InputError(
            f"{what} must be square aligned faces ({size}×{size}); got {h}×{w}. "
            "Use FaceDetectCrop (or `bfr restore` without --aligned) to detect and align the faces first."
        )
    if h == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=h > size, align_corners=False)

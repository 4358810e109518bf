"""PSNR and SSIM computed the way face-restoration papers report them (BasicSR's conventions).

Images are (B, 3, H, W) RGB in [0, 1] on any device; results are (B,) float64 tensors on that device
(float32 on devices without float64, such as MPS). The conventions, each a keyword:

* ``quantize=True``: values are rounded to 8-bit levels first, as they are once a restored image is
  saved as PNG; the computation then runs on the 0‥255 scale (PSNR peak 255, SSIM c1 = (0.01·255)²,
  c2 = (0.03·255)²).
* ``crop_border``: pixels dropped at each edge before measuring (0 for face crops).
* ``channel="y"``: the luma of MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, studio range 16‥235), unrounded;
  ``"rgb"``: all three channels.
* SSIM: Wang et al.'s 11×11 Gaussian window (σ = 1.5), only positions where the window fits
  ("valid"), the per-channel SSIM maps averaged.

Written here rather than taken from kornia/torchmetrics because those differ in exactly these details
(window padding, value range, colour conversion), and the numbers must be comparable with the papers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["psnr", "ssim", "rgb_to_y", "prepare_pair", "gaussian_window"]

#: MATLAB rgb2ycbcr luma row (ITU-R BT.601) for RGB in [0, 1] → Y in [16, 235].
Y_WEIGHTS = (65.481, 128.553, 24.966)


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def check_images(x: torch.Tensor, name: str = "images") -> None:
    """Raise an InputError unless ``x`` is a (B, C, H, W) floating tensor with C in (1, 3)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a (B, 3, H, W) RGB tensor in [0, 1]; got {shape}.")
    if not x.is_floating_point():
        raise InputError(f"{name} must be floating point in [0, 1]; got {x.dtype} (divide 8-bit images by 255).")


def rgb_to_y(x255: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB on the 0‥255 scale → (B, 1, H, W) MATLAB/BT.601 luma on the 0‥255 scale (16‥235)."""
    w = torch.tensor(Y_WEIGHTS, dtype=x255.dtype, device=x255.device).view(1, 3, 1, 1)
    return (x255 / 255.0 * w).sum(1, keepdim=True) + 16.0


def prepare_pair(restored: torch.Tensor, reference: torch.Tensor, *, crop_border: int = 0, channel: str = "y",
                 quantize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images on the 0‥255 scale in the working precision, cropped and converted as requested."""
    check_images(restored, "restored")
    check_images(reference, "reference")
    if restored.shape != reference.shape:
        raise InputError(
            f"restored {tuple(restored.shape)} and reference {tuple(reference.shape)} differ in shape; "
            "full-reference metrics compare pixel by pixel, so resize or crop one of them first."
        )
    if channel not in ("y", "rgb"):
        raise InputError(f"channel must be 'y' or 'rgb', got {channel!r}.")
    if crop_border < 0 or 2 * crop_border >= min(restored.shape[-2:]):
        raise InputError(f"crop_border={crop_border} leaves nothing of a {tuple(restored.shape[-2:])} image.")
    dtype = _work_dtype(restored.device)
    out = []
    for x in (restored, reference.to(restored.device)):
        x = x.to(dtype).clamp(0, 1) * 255.0
        if quantize:
            x = x.round()
        if crop_border:
            x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        if channel == "y" and x.shape[1] == 3:
            x = rgb_to_y(x)
        out.append(x)
    return out[0], out[1]


def psnr(restored: torch.Tensor, reference: torch.Tensor, *, crop_border: int = 0, channel: str = "y",
         quantize: bool = True) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, (B,); ``inf`` where the images are identical (as BasicSR)."""
    a, b = prepare_pair(restored, reference, crop_border=crop_border, channel=channel, quantize=quantize)
    mse = (a - b).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0 ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised 2-D Gaussian window (outer product of the 1-D one, like OpenCV's getGaussianKernel)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def ssim(restored: torch.Tensor, reference: torch.Tensor, *, crop_border: int = 0, channel: str = "y",
         quantize: bool = True) -> torch.Tensor:
    """Structural similarity, (B,), in [-1, 1] (1 for identical images)."""
    a, b = prepare_pair(restored, reference, crop_border=crop_border, channel=channel, quantize=quantize)
    if min(a.shape[-2:]) < 11:
        raise InputError(f"SSIM needs images of at least 11×11 pixels after cropping; got {tuple(a.shape[-2:])}.")
    c = a.shape[1]
    win = gaussian_window(dtype=a.dtype, device=a.device).expand(c, 1, 11, 11)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a.square()
    var_b = filt(b * b) - mu_b.square()
    cov = filt(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(1, 2, 3))


"""NIQE (Mittal et al. 2013, "Making a completely blind image quality analyzer"), no-reference.

Our implementation of the MATLAB release's algorithm with its pristine model, so scores match the
numbers face-restoration papers report, which mostly come from BasicSR's port of that MATLAB code.
Lower is better.

The recipe: luma of MATLAB ``rgb2ycbcr`` on 8-bit values, rounded; crop to whole 96×96 blocks; at two
scales (the second after MATLAB's antialiased bicubic ``imresize`` by ½) compute MSCN coefficients with
the 7×7 Gaussian window (replicate borders) and, per block, 18 features: an asymmetric generalised
Gaussian fit (AGGD, shape found on MATLAB's grid 0.2:0.001:10) of the coefficients and of their
products with the four (circularly) shifted neighbours; fit a Gaussian to the blocks' 36-d features
and take the Mahalanobis-like distance to the pristine Gaussian with the pooled covariance's
pseudo-inverse.

Numerics: BasicSR computes the MSCN coefficients in float32, and on flat image areas the variance
E[x²]−μ² cancels to float32 noise, so we round at the same points (luma, filtered moments, MSCN,
neighbour products) and do everything else in float64 on the images' device, all blocks at once.
Against BasicSR 1.4.2 this gives 1e-5…1e-4 on textured faces and ~2e-3 on crops with large flat
backgrounds, where the second scale depends on the last bit of the float32 resize (BasicSR's own
result varies there with the BLAS build). See ``tests/test_metrics_niqe.py``.

``niqe_pris_params.npz`` beside this file holds the pristine model's numbers (its ``origin`` entry says
where they come from). Hand-written because the task needs MATLAB-comparable values on the device
without BasicSR (which pulls in its whole training framework).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .full_reference import Y_WEIGHTS, check_images

__all__ = ["niqe", "matlab_imresize_half", "PRISTINE_PARAMS"]

PRISTINE_PARAMS = Path(__file__).with_name("niqe_pris_params.npz")
BLOCK = 96


@lru_cache(maxsize=None)
def _pristine() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(PRISTINE_PARAMS, allow_pickle=False) as z:
        return z["mu_pris_param"][0], z["cov_pris_param"], z["gaussian_window"]


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = −0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _resize_matrix(n_in: int, scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) matrix of MATLAB ``imresize`` (bicubic, antialiased when shrinking, symmetric borders)."""
    n_out = math.ceil(n_in * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    x = torch.arange(1, n_out + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    # 1-based indices outside 1..n_in mirror about the edge pixel, which is repeated ('symmetric').
    j = idx.long() - 1
    j = torch.where(j < 0, -j - 1, j)
    j = torch.where(j >= n_in, 2 * n_in - 1 - j, j)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.scatter_add_(1, j, w)
    return m.to(dtype=dtype, device=device)


def matlab_imresize_half(img: torch.Tensor) -> torch.Tensor:
    """MATLAB ``imresize(img, 0.5)`` (bicubic, antialiased) of a (..., H, W) tensor, as two matrix products."""
    mh = _resize_matrix(img.shape[-2], 0.5, img.dtype, img.device)
    mw = _resize_matrix(img.shape[-1], 0.5, img.dtype, img.device)
    return mh @ img @ mw.T


@lru_cache(maxsize=8)
def _aggd_grid(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MATLAB's shape grid 0.2:0.001:10 and its ratio Γ(2/α)² / (Γ(1/α)Γ(3/α))."""
    gam = torch.as_tensor(np.arange(0.2, 10.001, 0.001), dtype=torch.float64)
    r_gam = torch.exp(2 * torch.lgamma(2 / gam) - torch.lgamma(1 / gam) - torch.lgamma(3 / gam))
    return gam.to(dtype=dtype, device=device), r_gam.to(dtype=dtype, device=device)


def _aggd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AGGD fit of each row of ``x`` (N, n): shape α, left and right scales (NaN where a side is empty)."""
    gam, r_gam = _aggd_grid(x.dtype, x.device)
    neg, pos = (x < 0).to(x.dtype), (x > 0).to(x.dtype)
    sq = x * x
    left = torch.sqrt((sq * neg).sum(1) / neg.sum(1))  # 0/0 → NaN for an empty side, as np.mean([])
    right = torch.sqrt((sq * pos).sum(1) / pos.sum(1))
    g = left / right
    rhat = x.abs().mean(1).square() / sq.mean(1)
    rnorm = rhat * (g ** 3 + 1) * (g + 1) / (g * g + 1).square()
    pick = (r_gam[None, :] - rnorm[:, None]).square().argmin(1)
    pick = torch.where(torch.isnan(rnorm), torch.zeros_like(pick), pick)  # NumPy's argmin of all-NaN is 0
    alpha = gam[pick]
    ratio = torch.exp(0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)))  # sqrt(Γ(1/α)/Γ(3/α))
    return alpha, left * ratio, right * ratio


def _block_features(blocks: torch.Tensor) -> torch.Tensor:
    """(N, b, b) float32 MSCN blocks → (N, 18) float64 NIQE features."""
    n = blocks.shape[0]
    alpha, bl, br = _aggd(blocks.reshape(n, -1).double())
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))  # float32 product, as the reference
        alpha, bl, br = _aggd(prod.reshape(n, -1).double())
        feats += [alpha, (br - bl) * torch.exp(torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha)), bl, br]
    return torch.stack(feats, 1)


def _conv_replicate(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(H, W) ⊛ outer(g, g) with replicate borders, in float64, as two 1-D passes (the window is separable)."""
    k = g.numel() // 2
    t = F.pad(x.double()[None, None], (k, k, k, k), mode="replicate")
    t = F.conv2d(t, g.flip(0).view(1, 1, -1, 1))
    return F.conv2d(t, g.flip(0).view(1, 1, 1, -1))[0, 0]


def _mscn(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Mean-subtracted contrast-normalised coefficients of a float32 (H, W) image.

    The local moments are filtered in float64 and everything else is float32 arithmetic, which is
    where BasicSR's port (SciPy ``convolve`` of a float32 image) rounds; flat regions are sensitive
    to it, so we round at the same points.
    """
    mu = _conv_replicate(img, g).float()
    ex2 = _conv_replicate(img * img, g).float()
    sigma = (ex2 - mu * mu).abs().sqrt()
    return (img - mu) / (sigma + 1)


def _niqe_luma(y: torch.Tensor) -> torch.Tensor:
    """NIQE of one float32 (H, W) luma image on the 0‥255 scale, already rounded."""
    mu_p, cov_p, window_np = _pristine()
    nh, nw = y.shape[0] // BLOCK, y.shape[1] // BLOCK
    if nh * nw < 2:
        raise InputError(f"NIQE needs at least two {BLOCK}×{BLOCK} blocks (e.g. 96×192 pixels); got {tuple(y.shape)}.")
    img = y[: nh * BLOCK, : nw * BLOCK]
    g = torch.as_tensor(window_np.sum(1), dtype=torch.float64, device=y.device)  # window = outer(g, g)
    per_scale = []
    for scale in (1, 2):
        b = BLOCK // scale
        mscn = _mscn(img, g)
        blocks = mscn.reshape(nh, b, nw, b).permute(0, 2, 1, 3).reshape(nh * nw, b, b)
        per_scale.append(_block_features(blocks))
        if scale == 1:
            img = (matlab_imresize_half((img / 255.0).double()).float() * 255.0)
    feats = torch.cat(per_scale, 1)
    mu_d = torch.nanmean(feats, 0)
    clean = feats[~torch.isnan(feats).any(1)]
    cov_d = torch.cov(clean.T)
    mu_p_t = torch.as_tensor(mu_p, dtype=feats.dtype, device=y.device)
    cov_p_t = torch.as_tensor(cov_p, dtype=feats.dtype, device=y.device)
    d = mu_p_t - mu_d
    return torch.sqrt(d @ torch.linalg.pinv((cov_p_t + cov_d) / 2) @ d)


def _luma(x255: torch.Tensor) -> torch.Tensor:
    """float32 MATLAB luma (0‥255 scale) of (B, 3, H, W) 8-bit RGB values, rounding where BasicSR's ``to_y_channel`` does."""
    xs = (x255.float() / 255.0).double()
    w = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=xs.device).view(1, 3, 1, 1)
    y = (xs * w).sum(1, keepdim=True) + 16.0
    return (y / 255.0).float() * 255.0


def niqe(images: torch.Tensor, *, crop_border: int = 0, quantize: bool = True) -> torch.Tensor:
    """(B,) NIQE scores of (B, 3, H, W) RGB (or (B, 1, H, W) gray) images in [0, 1]; lower is better.

    ``quantize`` rounds to 8-bit levels first, as the saved image would be. Images need at least two
    96×96 blocks; the remainder past whole blocks is ignored, as in the MATLAB release.
    """
    check_images(images, "images")
    if images.device.type == "mps":
        raise InputError("NIQE needs float64, which MPS lacks; pass the images on the CPU.")
    x = images.double().clamp(0, 1) * 255.0
    if quantize:
        x = x.round()
    y = _luma(x) if x.shape[1] == 3 else x.float()
    if crop_border:
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    y = y.round()
    return torch.stack([_niqe_luma(y[i, 0]) for i in range(y.shape[0])])

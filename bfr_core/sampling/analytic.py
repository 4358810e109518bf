"""An exact ε-predictor for a Gaussian-mixture data distribution, to check samplers and guidance.

For data x₀ ~ Σ_k π_k N(m_k, s² I), x_t | k ~ N(√ᾱ m_k, (ᾱ s² + 1 − ᾱ) I), so E[x₀ | x_t] has a closed
form and so has the ideal ε. With a handful of real faces as the means this is a "face prior" whose
samples, guided or not, can be judged exactly (which face, how close), without a trained network.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedule import DiffusionSchedule

__all__ = ["GaussianMixtureEpsModel"]


class GaussianMixtureEpsModel(nn.Module):
    """Drop-in for :class:`~bfr_core.models.adm_unet.ADMUNet`: ``forward(x, t) -> [ε*, v]`` (B, 2C, H, W).

    ``means`` (K, C, H, W), ``std`` s ≥ 0, optional ``weights`` π (K,). ``var_interp`` is the constant v
    returned for the learned-range variance (−1: the posterior variance β̃, +1: β).
    """

    def __init__(self, means: torch.Tensor, std: float = 0.0, weights: torch.Tensor | None = None,
                 schedule: DiffusionSchedule | None = None, var_interp: float = -1.0):
        super().__init__()
        schedule = schedule or DiffusionSchedule.linear()
        self.register_buffer("means", means.double())
        w = torch.full((len(means),), 1.0 / len(means), dtype=torch.float64) if weights is None else weights.double()
        self.register_buffer("log_weights", torch.log(w / w.sum()))
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone())
        self.std = float(std)
        self.var_interp = float(var_interp)
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a dtype/device like a real network

    def posterior_mean(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x₀ | x_t] for a (B,) tensor of original-scale timesteps."""
        ab = self.alphas_cumprod[t.long()].reshape(-1, 1)  # (B, 1)
        var = ab * self.std**2 + (1 - ab)
        xf = x.double().flatten(1)  # (B, D)
        m = self.means.flatten(1)  # (K, D)
        d2 = (xf**2).sum(1, keepdim=True) - 2 * ab.sqrt() * xf @ m.T + ab * (m**2).sum(1)[None]
        resp = torch.softmax(self.log_weights[None] - d2 / (2 * var), dim=1)  # (B, K)
        gain = ab.sqrt() * self.std**2 / var  # E[x₀|x_t,k] = m_k + gain (x_t − √ᾱ m_k)
        mixed = resp @ m  # (B, D)
        x0 = mixed + gain * (xf - ab.sqrt() * mixed)
        return x0.reshape(x.shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod[t.long()].reshape(-1, 1, 1, 1)
        x0 = self.posterior_mean(x, t)
        eps = (x.double() - ab.sqrt() * x0) / (1 - ab).sqrt()
        v = torch.full_like(eps, self.var_interp)
        return torch.cat([eps, v], dim=1).to(x.dtype)

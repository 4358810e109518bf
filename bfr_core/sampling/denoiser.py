"""The iDDPM network (ε + learned-range variance) seen as a denoiser, in the spirit of k-diffusion's
``OpenAIDenoiser``: one call gives x̂₀, the posterior mean μ_θ and the variance Σ_θ of a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .schedule import DiffusionSchedule

__all__ = ["Prediction", "IDDPMDenoiser"]


@dataclass
class Prediction:
    """What the network says about x_t at one step; all float32, shaped like x_t.

    ``x0`` is x̂₀ (clipped to [-1, 1] when the denoiser clips); ``mean`` and ``variance`` /
    ``log_variance`` describe p_θ(x_{t-1} | x_t) = N(μ_θ, Σ_θ) with μ_θ the posterior mean at x̂₀.
    """

    x0: torch.Tensor
    eps: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


class IDDPMDenoiser:
    """``denoiser(x_t, schedule, index) -> Prediction`` for an ε-predicting, learned-range-variance model.

    ``model(x, t)`` takes x in the model's dtype and a (B,) tensor of original-scale timesteps and
    returns (B, 2C, H, W): ε and v ∈ [-1, 1] with log Σ = f·log β_t + (1−f)·log β̃_t, f = (v+1)/2,
    where β and β̃ are those of the (respaced) schedule. The network runs without autograd; the
    maths after it is float32 whatever the model's dtype.
    """

    def __init__(self, model: nn.Module, clip_x0: bool = True):
        self.model = model
        self.clip_x0 = clip_x0

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __call__(self, x: torch.Tensor, schedule: DiffusionSchedule, index: int) -> Prediction:
        c = schedule.table(x.device)
        t = c.timesteps[index].expand(x.shape[0])
        with torch.no_grad():
            out = self.model(x.to(self.dtype), t).float()
        channels = x.shape[1]
        if out.shape[1] != 2 * channels:
            raise InputError(
                f"the diffusion model returned {out.shape[1]} channels for a {channels}-channel input; "
                "PGDiff needs a learned-variance model (ε and v, twice the input channels)."
            )
        eps, v = out[:, :channels], out[:, channels:]
        x0 = c.sqrt_recip_alphas_cumprod[index] * x - c.sqrt_recipm1_alphas_cumprod[index] * eps
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean = c.posterior_mean_coef1[index] * x0 + c.posterior_mean_coef2[index] * x
        frac = (v + 1) / 2
        log_var = frac * c.log_betas[index] + (1 - frac) * c.posterior_log_variance_clipped[index]
        return Prediction(x0=x0, eps=eps, mean=mean, variance=torch.exp(log_var), log_variance=log_var)

"""The 4-step diffusion in W+ that VSPBFR's code diffuser runs: schedule, forward noising and two samplers.

Why plain functions here and not methods of :class:`~bfr_core.models.code_diffuser.CodeDiffuser`: the schedule
and the update rule are independent of the network (the same x0 sampler would drive any x0-predicting denoiser,
and the ε variant any ε-predictor), the trainer reuses :func:`sample_x0` unrolled with gradients from noised
degraded codes, and keeping models free of sampling logic is the package convention (models in ``models/``,
samplers in ``sampling/``). The network is passed in as ``denoiser(w_t, cond, t) -> prediction``.

Released behaviour (:func:`sample_x0`): β_t = (linspace(√0.1, √0.99, T))², the network predicts w_0, and each
step moves to the posterior mean μ̃_t(ŵ_0, w_t) = c₁(t)·ŵ_0 + c₂(t)·w_t — no noise is added (the official code
draws a noise tensor per step and never uses it). At t = 0, c₁ = 1 and c₂ = 0, so the result is the last ŵ_0.
The paper's variant (:func:`sample_eps`): the output is ε, w_{t−1} = μ̃_t(ŵ_0(ε), w_t) + σ_t z with
σ_t² = β̃_t, and no noise at the last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from ..progress import Progress

__all__ = ["WPlusSchedule", "vspbfr_schedule", "q_sample", "sample_x0", "sample_eps", "start_noise"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class WPlusSchedule:
    """Per-step float32 coefficients of a discrete diffusion (computed in float64, as the official code)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "WPlusSchedule":
        b = betas.to(torch.float64)
        a = 1.0 - b
        ac = torch.cumprod(a, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        f = lambda t: t.to(torch.float32)  # noqa: E731
        return cls(
            betas=f(b), alphas_cumprod=f(ac), sqrt_alphas_cumprod=f(ac.sqrt()),
            sqrt_one_minus_alphas_cumprod=f((1.0 - ac).sqrt()), sqrt_recip_alphas_cumprod=f((1.0 / ac).sqrt()),
            sqrt_recipm1_alphas_cumprod=f((1.0 / ac - 1).sqrt()),
            posterior_variance=f(b * (1.0 - ac_prev) / (1.0 - ac)),
            posterior_mean_coef1=f(b * ac_prev.sqrt() / (1.0 - ac)),
            posterior_mean_coef2=f((1.0 - ac_prev) * a.sqrt() / (1.0 - ac)),
        )


def vspbfr_schedule(timesteps: int = 4, beta_start: float = 0.1, beta_end: float = 0.99) -> WPlusSchedule:
    """The released schedule: β = (linspace(√beta_start, √beta_end, T))² (LDM's "linear")."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return WPlusSchedule.from_betas(betas)


def _at(coef: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
    return coef[t].to(device=like.device, dtype=like.dtype)


def start_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """w_T ~ N(0, I) with ``like``'s shape, drawn from ``generator`` (float32, on the generator's device)."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


def q_sample(x0: torch.Tensor, t: int, noise: torch.Tensor, schedule: WPlusSchedule) -> torch.Tensor:
    """Forward noising √ᾱ_t x0 + √(1−ᾱ_t) ε (training starts the chain from noised degraded codes this way)."""
    return _at(schedule.sqrt_alphas_cumprod, t, x0) * x0 + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def _check(cond: torch.Tensor, start: torch.Tensor | None, steps: int) -> None:
    if cond.ndim != 3:
        raise InputError(f"condition codes must be (batch, rows, dim), got {tuple(cond.shape)}")
    if start is not None and start.shape != cond.shape:
        raise InputError(f"the starting codes {tuple(start.shape)} must have the condition's shape {tuple(cond.shape)}")
    if steps < 1:
        raise InputError("the code diffuser needs at least one step")


def _t_batch(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)


def sample_x0(denoiser: Denoiser, cond: torch.Tensor, schedule: WPlusSchedule, *, start: torch.Tensor | None = None,
              generator: torch.Generator | None = None, progress: Progress | None = None) -> torch.Tensor:
    """The released sampler: deterministic posterior-mean steps t = T−1 … 0 with an x0-predicting denoiser.

    ``start`` is w_T (default: N(0, I) from ``generator``). Gradients flow if the caller enables them.
    """
    _check(cond, start, schedule.num_timesteps)
    x = start if start is not None else start_noise(cond, generator)
    for t in reversed(range(schedule.num_timesteps)):
        x0 = denoiser(x, cond, _t_batch(t, x))
        x = _at(schedule.posterior_mean_coef1, t, x) * x0 + _at(schedule.posterior_mean_coef2, t, x) * x
        if progress is not None:
            progress.step()
    return x


def sample_eps(denoiser: Denoiser, cond: torch.Tensor, schedule: WPlusSchedule, *, start: torch.Tensor | None = None,
               generator: torch.Generator | None = None, progress: Progress | None = None,
               step_noise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The paper's ancestral sampler with an ε-predicting denoiser: μ̃_t + σ_t z, σ_t² = β̃_t.

    z comes from ``step_noise(like)`` if given (e.g. one generator per face), else from ``generator``.
    """
    _check(cond, start, schedule.num_timesteps)
    x = start if start is not None else start_noise(cond, generator)
    for t in reversed(range(schedule.num_timesteps)):
        eps = denoiser(x, cond, _t_batch(t, x))
        x0 = _at(schedule.sqrt_recip_alphas_cumprod, t, x) * x - _at(schedule.sqrt_recipm1_alphas_cumprod, t, x) * eps
        x = _at(schedule.posterior_mean_coef1, t, x) * x0 + _at(schedule.posterior_mean_coef2, t, x) * x
        if t > 0:
            z = step_noise(x) if step_noise is not None else start_noise(x, generator)
            x = x + _at(schedule.posterior_variance, t, x).sqrt() * z
        if progress is not None:
            progress.step()
    return x

"""PGDiff stages: the time-conditioned RRDB restorer, and a small unconditional face DDPM.

``pgdiff_restorer`` (paper A.3): the restorer f(x_t, y, t) learns to predict the clean face x₀ from the
noisy sample x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε at a random step t of the 1000-step linear schedule and the
degraded face y (Real-ESRGAN second-order degradations); MSE only in the paper.

``pgdiff_ddpm``: an ε-predicting UNet with learned-range variance (the ADM/iDDPM family DifFace's prior
belongs to), trained with iDDPM's hybrid objective — ε-MSE plus the variational bound on the variance
with the mean held fixed — so that it drops into PGDiff's sampler in place of DifFace's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bfr_core.sampling import DiffusionSchedule, IDDPMDenoiser, q_posterior, q_sample, sample_ddpm, space_timesteps
from bfr_core.seeding import randn

from ..config import check
from . import StepContext, register_stage

PGDIFF_LICENCE_HINT = (
    "PGDiff's code and the DifFace prior are under the NTU S-Lab License 1.0 (non-commercial); weights you train "
    "with this code on your own data carry your data's terms."
)


def _timesteps(ctx: StepContext, batch: int, low: int, high: int) -> torch.Tensor:
    gen = ctx.generator
    return torch.randint(low, high + 1, (batch,), generator=gen, device=gen.device).to(ctx.device)


# ------------------------------------------------------------------------------------------ restorer


@dataclass
class RestorerOptions:
    num_train_steps: int = 1000  # the diffusion schedule the restorer is conditioned on (DifFace's)
    t_min: int = 0
    t_max: int | None = None  # default: the last step
    sample_timestep: int | None = None  # the t of sample grids and validation; default: the last step

    def __post_init__(self) -> None:
        last = self.num_train_steps - 1
        self.t_max = last if self.t_max is None else self.t_max
        self.sample_timestep = last if self.sample_timestep is None else self.sample_timestep
        check(self.num_train_steps >= 2, "stage_options.num_train_steps must be ≥ 2")
        check(0 <= self.t_min <= self.t_max <= last, f"stage_options: need 0 ≤ t_min ≤ t_max ≤ {last}")
        check(0 <= self.sample_timestep <= last, f"stage_options.sample_timestep must be in 0…{last}")


def _linear_schedule(ctx: StepContext) -> DiffusionSchedule:
    return DiffusionSchedule.linear(ctx.options.num_train_steps)


def _restorer_sample(ctx: StepContext, batch: dict) -> dict:
    x0, y = batch["hq"], batch["lq"]
    t = torch.full((x0.shape[0],), ctx.options.sample_timestep, device=ctx.device, dtype=torch.long)
    x_t = q_sample(ctx.state, x0, t, randn(x0.shape, ctx.generator, device=ctx.device))
    restored = ctx.models["restorer"](x_t, y, t)
    return {"degraded": y, "restored": restored, "target": x0}


@register_stage(
    "pgdiff_restorer", options=RestorerOptions, models=("restorer",), sample=_restorer_sample,
    setup=_linear_schedule, licence_hint=PGDIFF_LICENCE_HINT,
)
def restorer_step(ctx: StepContext, batch: dict) -> dict:
    """PGDiff's restorer f(x_t, y, t) → x₀ on noised HQ faces and their degraded versions."""
    x0, y = batch["hq"], batch["lq"]
    t = _timesteps(ctx, x0.shape[0], ctx.options.t_min, ctx.options.t_max)
    x_t = q_sample(ctx.state, x0, t, randn(x0.shape, ctx.generator, device=ctx.device))
    pred = ctx.models["restorer"](x_t, y, t, clamp=False)
    loss, parts = ctx.losses(pred, x0)
    ctx.backward(loss)
    return {"loss": loss, **parts}


# -------------------------------------------------------------------------------------- small DDPM


@dataclass
class DDPMOptions:
    num_train_steps: int = 1000
    vlb_weight: float = 1.0  # multiplies iDDPM's L_vlb (bits/dim, scaled by T/1000); 0 trains the mean only
    sample_steps: int = 50  # respaced ancestral steps for sample grids

    def __post_init__(self) -> None:
        check(self.num_train_steps >= 2, "stage_options.num_train_steps must be ≥ 2")
        check(2 <= self.sample_steps <= self.num_train_steps, "stage_options.sample_steps must be in 2…num_train_steps")
        check(self.vlb_weight >= 0, "stage_options.vlb_weight must be ≥ 0")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """−log P(x) of 8-bit pixels (bins of width 2/255 on [-1, 1], open-ended at the edges), elementwise, nats."""
    inv = torch.exp(-log_scale)
    upper = _std_normal_cdf(inv * (x - mean + 1.0 / 255))
    lower = _std_normal_cdf(inv * (x - mean - 1.0 / 255))
    prob = torch.where(x < -0.999, upper, torch.where(x > 0.999, 1.0 - lower, upper - lower))
    return -torch.log(prob.clamp_min(1e-12))


def vlb_bits_per_dim(sched: DiffusionSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     eps: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample variational-bound term at step t (bits/dim) for ε + learned-range-variance outputs."""
    c = sched.table(x0.device)
    shape = (-1, 1, 1, 1)
    x0_pred = c.sqrt_recip_alphas_cumprod[t].view(shape) * x_t - c.sqrt_recipm1_alphas_cumprod[t].view(shape) * eps
    mean, _ = q_posterior(sched, x0_pred, x_t, t)
    frac = (v + 1) / 2
    log_var = frac * c.log_betas[t].view(shape) + (1 - frac) * c.posterior_log_variance_clipped[t].view(shape)
    true_mean, true_log_var = q_posterior(sched, x0, x_t, t)
    kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=(1, 2, 3))
    nll = discretized_gaussian_nll(x0, mean, 0.5 * log_var).mean(dim=(1, 2, 3))
    return torch.where(t == 0, nll, kl) / math.log(2.0)


def _ddpm_sample(ctx: StepContext, batch: dict) -> dict:
    unet = ctx.models["unet"]
    sched = ctx.state.respace(space_timesteps(ctx.options.num_train_steps, ctx.options.sample_steps))
    x = randn(batch["hq"].shape, ctx.generator, device=ctx.device)
    samples = sample_ddpm(IDDPMDenoiser(unet), x, sched, generator=ctx.generator)
    return {"samples": samples.clamp(-1, 1), "training": batch["hq"]}


@register_stage(
    "pgdiff_ddpm", options=DDPMOptions, models=("unet",), sample=_ddpm_sample, setup=_linear_schedule,
    needs_lq=False, uses_losses=False, licence_hint=PGDIFF_LICENCE_HINT,
)
def ddpm_step(ctx: StepContext, batch: dict) -> dict:
    """An unconditional face DDPM (ε + learned-range variance, iDDPM hybrid loss)."""
    x0 = batch["hq"]
    t = _timesteps(ctx, x0.shape[0], 0, ctx.options.num_train_steps - 1)
    noise = randn(x0.shape, ctx.generator, device=ctx.device)
    x_t = q_sample(ctx.state, x0, t, noise)
    out = ctx.models["unet"](x_t, t).float()
    if out.shape[1] != 2 * x0.shape[1]:
        raise ValueError("pgdiff_ddpm needs out_channels = 2 × in_channels (ε and the variance value)")
    eps, v = out.chunk(2, dim=1)
    mse = F.mse_loss(eps, noise)
    vlb = vlb_bits_per_dim(ctx.state, x0, x_t, t, eps.detach(), v).mean() * (ctx.options.num_train_steps / 1000.0)
    loss = mse + ctx.options.vlb_weight * vlb
    ctx.backward(loss)
    return {"loss": loss, "mse": mse.detach(), "vlb": vlb.detach()}

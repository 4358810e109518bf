"""Samplers as plain functions: ``sampler(denoiser, x_T, schedule, *, guidance, generator, progress, callback) -> x_0``.

Both samplers walk the (respaced) schedule from its last index to 0. At each step they form an
unguided proposal x' = m + n (m the deterministic part, n the noise part), and, when a guidance hook
is given and active, replace it with the hook's corrected sample (PGDiff's partial guidance, see
:mod:`bfr_core.guidance`). Inside the hook's multi-step window a step is repeated at the same t,
starting from the sample just produced.

Everything is batched; the loop never synchronises with the host (no ``.item()``/``.cpu()``), so it
runs ahead on a GPU. Noise comes from ``generator`` only: one generator draws each step's noise for the
whole batch (as PGDiff's released sampler), a sequence of one generator per image draws image i's noise
from generator i, so that an image's samples do not depend on the images sampled with it. The same
generator states give the same samples. Progress, previews (x̂₀) and cancellation go through
:class:`bfr_core.progress.Progress`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import torch

from ..errors import InputError
from ..progress import Progress
from ..seeding import randn_batch
from .denoiser import IDDPMDenoiser, Prediction
from .schedule import DiffusionSchedule

__all__ = ["GuidanceHook", "sample_ddpm", "sample_ddim", "ddpm_step", "ddim_step"]

Callback = Callable[[dict[str, Any]], None]
#: One generator for the whole batch, or one per image.
Generators = torch.Generator | Sequence[torch.Generator]


class GuidanceHook(Protocol):
    """What a sampler needs from guidance (implemented by :class:`bfr_core.guidance.BoundGuidance`)."""

    def context(self, x_t: torch.Tensor, t: torch.Tensor, index: int, num_steps: int) -> Any: ...

    def passes(self, index: int, num_steps: int) -> int: ...

    def gradient(self, x0: torch.Tensor, ctx: Any, pass_index: int) -> torch.Tensor | None: ...

    def apply(self, x_t: torch.Tensor, mean: torch.Tensor, noise: torch.Tensor, variance: torch.Tensor,
              grad: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor: ...


def _finish(x_t, pred: Prediction, mean, noise_term, guidance, ctx, pass_index, reference=None) -> torch.Tensor:
    grad = guidance.gradient(pred.x0, ctx, pass_index) if guidance is not None else None
    if grad is None:
        return mean + noise_term
    return guidance.apply(x_t, mean, noise_term, pred.variance, grad, reference=reference)


def ddpm_step(denoiser: IDDPMDenoiser, x: torch.Tensor, schedule: DiffusionSchedule, index: int, noise: torch.Tensor,
              guidance: GuidanceHook | None = None, ctx: Any = None, pass_index: int = 0) -> tuple[torch.Tensor, Prediction]:
    """One ancestral step x_t → x_{t-1} = μ_θ + σ_θ z (no noise at index 0), with optional guidance."""
    pred = denoiser(x, schedule, index)
    noise_term = torch.exp(0.5 * pred.log_variance) * noise if index > 0 else torch.zeros_like(x)
    return _finish(x, pred, pred.mean, noise_term, guidance, ctx, pass_index), pred


def ddim_step(denoiser: IDDPMDenoiser, x: torch.Tensor, schedule: DiffusionSchedule, index: int, noise: torch.Tensor,
              guidance: GuidanceHook | None = None, ctx: Any = None, pass_index: int = 0,
              eta: float = 0.0) -> tuple[torch.Tensor, Prediction]:
    """One DDIM step (Song et al., Eq. 12) from the x̂₀ prediction, with optional guidance.

    ε is re-derived from the (clipped) x̂₀ so that the step is consistent with it. Guidance corrects
    the DDIM proposal with the same rules as in DDPM, and the same strength: the "classic" Σ is the
    model's learned-range variance of this step, and the dynamic scale is measured on the ancestral
    step μ_θ + σ_θ z with this step's noise (a deterministic DDIM step is much shorter, and the released
    scales were tuned on ancestral steps).
    """
    pred = denoiser(x, schedule, index)
    c = schedule.table(x.device)
    ab, ab_prev = c.alphas_cumprod[index], c.alphas_cumprod_prev[index]
    eps = (c.sqrt_recip_alphas_cumprod[index] * x - pred.x0) / c.sqrt_recipm1_alphas_cumprod[index]
    sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
    mean = pred.x0 * torch.sqrt(ab_prev) + torch.sqrt((1 - ab_prev - sigma**2).clamp_min(0)) * eps
    noise_term = sigma * noise if index > 0 and eta > 0 else torch.zeros_like(x)
    reference = None
    if guidance is not None:
        reference = pred.mean + torch.exp(0.5 * pred.log_variance) * noise if index > 0 else pred.mean
    return _finish(x, pred, mean, noise_term, guidance, ctx, pass_index, reference), pred


def _loop(step, denoiser, x, schedule, guidance, generator, progress, callback, **kw) -> torch.Tensor:
    num = len(schedule)
    progress = progress or Progress(num)
    progress.cancel_point()
    gen = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
    c = schedule.table(x.device)
    x = x.float()
    for i, index in enumerate(reversed(range(num))):
        t = c.timesteps[index].expand(x.shape[0])
        ctx = guidance.context(x, t, index, num) if guidance is not None else None
        passes = guidance.passes(index, num) if guidance is not None else 1
        for p in range(passes):
            noise = randn_batch(x.shape, gen, device=x.device)
            x, pred = step(denoiser, x, schedule, index, noise, guidance, ctx, p, **kw)
        if callback is not None:
            callback({"i": i, "index": index, "t": t, "x": x, "x0": pred.x0})
        progress.step(preview=pred.x0)
    return x


def sample_ddpm(denoiser: IDDPMDenoiser, x: torch.Tensor, schedule: DiffusionSchedule, *,
                guidance: GuidanceHook | None = None, generator: Generators | None = None,
                progress: Progress | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Ancestral (respaced) DDPM sampling from x_T = ``x``; one noise draw per pass (per image with one generator
    per image), also at the last step (where it is unused), which keeps seeded runs in step with PGDiff's
    released sampler."""
    return _loop(ddpm_step, denoiser, x, schedule, guidance, generator, progress, callback)


def sample_ddim(denoiser: IDDPMDenoiser, x: torch.Tensor, schedule: DiffusionSchedule, *, eta: float = 0.0,
                guidance: GuidanceHook | None = None, generator: Generators | None = None,
                progress: Progress | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DDIM sampling (``eta`` = 0: deterministic) with PGDiff guidance applied to each proposal.

    The released DDIM path cannot run with partial guidance (its hook returns a tuple where a tensor
    is expected, and the hook needs x̂₀); this one uses the same x̂₀ gradient and update rules as DDPM.
    """
    if not (0.0 <= eta and math.isfinite(eta)):
        raise InputError(f"eta must be a finite number ≥ 0 (0 = deterministic DDIM), got {eta}")
    return _loop(ddim_step, denoiser, x, schedule, guidance, generator, progress, callback, eta=eta)

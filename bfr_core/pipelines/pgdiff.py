"""PGDiff: restore aligned face crops by sampling DifFace's face DDPM under partial guidance.

``restore`` ties the pieces together: the ε/learned-variance UNet (:mod:`bfr_core.models.adm_unet`),
a respaced schedule and sampler (:mod:`bfr_core.sampling`) and the guidance
(:mod:`bfr_core.guidance`, e.g. ``presets.restoration(restorer)``). Crops are (B, 3, H, W) in [-1, 1];
they are resized to the model's 512 px and back. The UNet runs without autograd; only the guidance
losses are differentiated, with respect to x̂₀.

Seeding: x_T and every step's noise come from ``make_generator(seed, device)``, drawn in the order of
PGDiff's released sampler, so with batch 1 on the same device a seed gives the released x_T.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..guidance import CompositeGuidance
from ..progress import Progress
from ..sampling import (
    DiffusionSchedule,
    IDDPMDenoiser,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
)
from ..seeding import make_generator, randn

log = logging.getLogger(__name__)

__all__ = ["SAMPLERS", "make_schedule", "restore"]

SAMPLERS = ("ddpm", "ddim")
NUM_TRAIN_STEPS = 1000


@functools.lru_cache(maxsize=16)
def make_schedule(steps: int | str = NUM_TRAIN_STEPS, num_train_steps: int = NUM_TRAIN_STEPS) -> DiffusionSchedule:
    """The linear-β schedule respaced to ``steps``.

    An int K uses PGDiff's ``ddpmK`` rule (every k-th step from 0) when an integer stride gives exactly
    K steps, otherwise K evenly spread steps; strings are passed to
    :func:`~bfr_core.sampling.space_timesteps` (``"ddpm100"``, ``"50,25"``...). Cached, so that the
    coefficient tables stay on the device between runs.
    """
    base = DiffusionSchedule.linear(num_train_steps)
    if isinstance(steps, int) and not isinstance(steps, bool):
        if not 2 <= steps <= num_train_steps:
            raise InputError(f"steps must be between 2 and {num_train_steps}, got {steps}.")
        try:
            keep = space_timesteps(num_train_steps, f"ddpm{steps}")
        except InputError:
            keep = space_timesteps(num_train_steps, steps)
    else:
        keep = space_timesteps(num_train_steps, str(steps))
    return base.respace(keep)


def _autocast(device: torch.device, dtype: torch.dtype | None, model_dtype: torch.dtype):
    if dtype is None or dtype == model_dtype or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def restore(unet: nn.Module, lq: torch.Tensor, guidance: CompositeGuidance | None, *, steps: int | str = NUM_TRAIN_STEPS,
            sampler: str = "ddpm", eta: float = 0.0, seed: int = 1234, noise: torch.Tensor | None = None,
            dtype: torch.dtype | None = None, clip_denoised: bool = True, progress: Progress | None = None,
            callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Sample restored faces for ``lq`` (B, 3, H, W) in [-1, 1]; returns the same shape in [-1, 1].

    ``unet``: the DDPM (any module ``(x, t) -> [ε, v]``) on its device and dtype; guidance networks
    (restorer, ArcFace...) live in ``guidance`` on the same device. ``steps``: see :func:`make_schedule`.
    ``sampler``: ``"ddpm"`` (ancestral, as released) or ``"ddim"`` (``eta`` = 0 deterministic).
    ``noise``: an explicit x_T (B, 3, S, S) instead of the seeded one (the step noise still follows ``seed``). ``dtype``: run the networks under
    autocast in this precision (None: as they are); the diffusion maths stay float32.
    """
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if not isinstance(lq, torch.Tensor) or lq.dim() != 4 or lq.shape[1] != 3:
        raise InputError(f"the low-quality faces must be a (B, 3, H, W) tensor in [-1, 1], got {getattr(lq, 'shape', type(lq).__name__)}.")
    param = next(unet.parameters())
    device = param.device
    size = int(getattr(getattr(unet, "config", None), "image_size", lq.shape[-1]))
    in_size = tuple(lq.shape[-2:])
    y = lq.to(device=device, dtype=torch.float32)
    if in_size != (size, size):
        y = F.interpolate(y, (size, size), mode="bilinear", antialias=True, align_corners=False)
    schedule = make_schedule(steps)
    shape = (lq.shape[0], 3, size, size)
    gen = make_generator(seed, device)
    x = randn(shape, gen, device=device)  # drawn even when replaced, so the step noise only depends on the seed
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise InputError(f"noise must have shape {shape}, got {tuple(noise.shape)}.")
        x = noise.to(device=device, dtype=torch.float32)
    bound = guidance.bind(y, x) if guidance is not None else None
    denoiser = IDDPMDenoiser(unet, clip_x0=clip_denoised)
    progress = progress or Progress(len(schedule))
    with _autocast(device, dtype, param.dtype):
        if sampler == "ddpm":
            out = sample_ddpm(denoiser, x, schedule, guidance=bound, generator=gen, progress=progress, callback=callback)
        else:
            out = sample_ddim(denoiser, x, schedule, eta=eta, guidance=bound, generator=gen, progress=progress, callback=callback)
    out = out.float().clamp(-1.0, 1.0)
    if in_size != (size, size):
        out = F.interpolate(out, in_size, mode="bilinear", antialias=True, align_corners=False).clamp(-1.0, 1.0)
    return out

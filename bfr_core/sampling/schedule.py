"""Discrete diffusion schedules (DDPM / iDDPM): β, ᾱ, the posterior q(x_{t-1} | x_t, x_0), respacing.

A :class:`DiffusionSchedule` holds K steps. For the training schedule K = 1000 and ``timesteps`` is
0…999. A respaced schedule keeps a subset of the original steps and recomputes its β from the kept
ᾱ (β'_k = 1 − ᾱ_{t_k} / ᾱ_{t_{k-1}}), so that the marginals q(x_t | x_0) at the kept steps are
unchanged; ``timesteps`` maps each respaced index back to the original step, which is what the
networks were trained on. Everything is computed in float64 (as the reference code does with NumPy);
:meth:`DiffusionSchedule.table` hands out float32 copies on the compute device.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterable, Sequence

import torch

from ..errors import InputError

__all__ = ["DiffusionSchedule", "linear_betas", "space_timesteps", "respace", "q_sample", "q_posterior"]

_TABLE_NAMES = (
    "betas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s linear β schedule, rescaled so that any step count spans the same noise range."""
    scale = 1000.0 / num_steps
    return torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)


@dataclass(eq=False)
class DiffusionSchedule:
    """β and everything derived from it, for the K steps of a (possibly respaced) schedule.

    ``timesteps[k]`` is the original training step of index k; ``num_train_steps`` the length of the
    schedule it was cut from.
    """

    betas: torch.Tensor
    timesteps: torch.Tensor
    num_train_steps: int

    def __post_init__(self) -> None:
        b = self.betas = torch.as_tensor(self.betas, dtype=torch.float64).cpu()
        self.timesteps = torch.as_tensor(self.timesteps, dtype=torch.int64).cpu()
        if b.dim() != 1 or len(b) < 2 or not bool(((b > 0) & (b <= 1)).all()):
            raise InputError("a diffusion schedule needs at least 2 steps with 0 < β ≤ 1")
        if self.timesteps.shape != b.shape:
            raise InputError("timesteps must give one original step per β")
        ac = torch.cumprod(1.0 - b, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        self.log_betas = torch.log(b)
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / ac).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1).sqrt()
        pv = b * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_variance = pv
        # β̃_0 = 0; like iDDPM, use β̃_1 there so the log stays finite.
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]]))
        self.posterior_mean_coef1 = b * ac_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * (1.0 - b).sqrt() / (1.0 - ac)
        self._tables: dict[torch.device, SimpleNamespace] = {}

    @classmethod
    def linear(cls, num_steps: int = 1000) -> "DiffusionSchedule":
        """The 1000-step linear-β schedule DifFace's model was trained with."""
        return cls(linear_betas(num_steps), torch.arange(num_steps), num_steps)

    def __len__(self) -> int:
        return len(self.betas)

    def table(self, device: torch.device | str) -> SimpleNamespace:
        """float32 copies of every coefficient on ``device`` (cached), plus ``timesteps`` (int64)."""
        device = torch.device(device)
        if device not in self._tables:
            t = SimpleNamespace(**{n: getattr(self, n).to(device=device, dtype=torch.float32) for n in _TABLE_NAMES})
            t.timesteps = self.timesteps.to(device)
            self._tables[device] = t
        return self._tables[device]

    def respace(self, use_timesteps: Iterable[int]) -> "DiffusionSchedule":
        """Keep only ``use_timesteps`` (indices into this schedule); see the module docstring."""
        return respace(self, use_timesteps)


def respace(schedule: DiffusionSchedule, use_timesteps: Iterable[int]) -> DiffusionSchedule:
    """A schedule over the kept steps with β recomputed from their ᾱ and indices mapped to original steps."""
    keep = sorted({int(i) for i in use_timesteps})
    if not keep or keep[0] < 0 or keep[-1] >= len(schedule):
        raise InputError(f"respacing asks for steps outside 0…{len(schedule) - 1}")
    ac = schedule.alphas_cumprod[keep]
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    return DiffusionSchedule(1.0 - ac / prev, schedule.timesteps[keep], schedule.num_train_steps)


def space_timesteps(num_steps: int, spec: int | str | Sequence[int]) -> set[int]:
    """Which of ``num_steps`` original steps to keep.

    ``"ddpmK"`` (or ``"ddimK"``): the smallest integer stride that yields exactly K steps starting at 0
    (PGDiff's ``--timestep_respacing ddpmK``). An int K or ``"K"``: K steps spread evenly over the
    whole range (rounded), ending at the last step. ``"a,b,c"`` or a sequence: that many evenly
    spaced steps in each of equally sized sections.
    """
    if isinstance(spec, str):
        s = spec.strip().lower()
        for prefix in ("ddpm", "ddim"):
            if s.startswith(prefix):
                want = int(s[len(prefix):])
                for stride in range(1, num_steps):
                    if len(range(0, num_steps, stride)) == want:
                        return set(range(0, num_steps, stride))
                raise InputError(f"{spec!r}: no integer stride gives exactly {want} of {num_steps} steps; use a plain step count instead.")
        counts = [int(c) for c in s.split(",") if c.strip()]
    elif isinstance(spec, int):
        counts = [spec]
    else:
        counts = [int(c) for c in spec]
    if not counts or min(counts) < 1:
        raise InputError(f"respacing {spec!r} must ask for at least one step per section")
    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise InputError(f"cannot take {count} steps from a section of {size} steps (at most {num_steps} in total)")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return set(steps)


def _at(coef: torch.Tensor, index: int | torch.Tensor, ndim: int) -> torch.Tensor:
    """Coefficient(s) at ``index`` shaped to broadcast over a (B, C, H, W) tensor."""
    value = coef[index]
    return value.reshape(-1, *([1] * (ndim - 1))) if value.dim() else value


def q_sample(schedule: DiffusionSchedule, x0: torch.Tensor, index: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε at schedule index ``index`` (an int, or a (B,) tensor)."""
    c = schedule.table(x0.device)
    return _at(c.sqrt_alphas_cumprod, index, x0.dim()) * x0 + _at(c.sqrt_one_minus_alphas_cumprod, index, x0.dim()) * noise


def q_posterior(schedule: DiffusionSchedule, x0: torch.Tensor, x_t: torch.Tensor, index: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance (clipped at step 0) of q(x_{t-1} | x_t, x₀)."""
    c = schedule.table(x0.device)
    mean = _at(c.posterior_mean_coef1, index, x0.dim()) * x0 + _at(c.posterior_mean_coef2, index, x0.dim()) * x_t
    return mean, _at(c.posterior_log_variance_clipped, index, x0.dim()).expand_as(x_t)

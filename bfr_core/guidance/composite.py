"""The sum of guidance terms, its gradient with respect to x̂₀, and the two released update rules.

At each step the active terms' losses are summed and differentiated once with respect to the
*detached* prediction x̂₀ (no backpropagation through the UNet), as the released code does. The
gradient g then corrects the sampler's proposal x' = m + n:

* ``"classic"`` (released for restoration and reference-based restoration): x_{t-1} = (m − s·Σ_θ·g) + n,
  classifier guidance with a constant scale s and the model's variance Σ_θ;
* ``"dynamic"`` (released for colourisation, inpainting, old photos; paper Eq. 8):
  x_{t-1} = x' − s·‖x_t − x'‖/‖g‖·g, with norms over each whole image (``norm="global"``) or over each
  colour channel (``norm="channel"``).

Where any term has a hole mask (inpainting holes, scratches), the whole gradient is zeroed there, as
released. Terms with ``n_steps`` > 1 make the sampler repeat a step (same t, fresh noise, from the
sample just produced) inside the multi-step window; a term takes part in the first ``n_steps`` passes.

Differences from the released code, all on purpose:

* norms are taken per image, so a batch gives the same results as its images one by one (the released
  code takes them over the whole batch, which it only ever runs with one image); a zero gradient gives
  no update instead of NaN;
* the multi-step window (N passes for S_end < t < S_start) is expressed in indices of the *sampled*
  schedule, ``int(repeat_stop·K) < i < int(repeat_start·K)``. With 1000 steps this is exactly the
  released rule; the released code compares respaced indices with thresholds on the 1000-step scale,
  so with e.g. 100 steps its window (700 < i < 1000) is never reached and N has no effect.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import torch

from ..errors import InputError
from .base import GuidanceContext, GuidanceTerm, fit_image, window_index

__all__ = ["CompositeGuidance", "BoundGuidance"]

_UPDATES = ("classic", "dynamic")
_NORMS = ("global", "channel")


@dataclass(frozen=True)
class CompositeGuidance:
    """Terms plus how their gradient is applied. Immutable; :meth:`add` returns an extended copy."""

    terms: tuple[GuidanceTerm, ...] = ()
    scale: float = 0.1
    update: str = "classic"
    norm: str = "global"
    repeat_start: float = 1.0
    repeat_stop: float = 0.7

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        if self.update not in _UPDATES:
            raise InputError(f"guidance update must be one of {_UPDATES}, got {self.update!r}")
        if self.norm not in _NORMS:
            raise InputError(f"dynamic-scale norm must be one of {_NORMS}, got {self.norm!r}")
        if not (0.0 <= self.repeat_stop <= self.repeat_start <= 1.0):
            raise InputError("need 0 ≤ repeat_stop ≤ repeat_start ≤ 1 for the multi-step window")
        for term in self.terms:
            if not isinstance(term, GuidanceTerm):
                raise InputError(f"guidance terms must be GuidanceTerm objects, got {type(term).__name__}")

    def add(self, *terms: GuidanceTerm) -> "CompositeGuidance":
        return dataclasses.replace(self, terms=self.terms + tuple(terms))

    def replace(self, **changes) -> "CompositeGuidance":
        return dataclasses.replace(self, **changes)

    def bind(self, y: torch.Tensor | None, like: torch.Tensor) -> "BoundGuidance":
        """Fit every term's tensors to samples shaped like ``like`` and attach the input image ``y``."""
        y = None if y is None else fit_image(y, like, "the input image").expand(like.shape[0], -1, -1, -1)
        return BoundGuidance(self, tuple(term.bind(like) for term in self.terms), y)


class BoundGuidance:
    """A :class:`CompositeGuidance` ready for one sampling run (the samplers' guidance hook)."""

    def __init__(self, spec: CompositeGuidance, terms: Iterable[GuidanceTerm], y: torch.Tensor | None):
        self.spec = spec
        self.terms = tuple(terms)
        self.y = y
        holes = [h for h in (term.hole() for term in self.terms) if h is not None]
        self.hole = None
        for h in holes:
            self.hole = h if self.hole is None else self.hole | h

    def context(self, x_t: torch.Tensor, t: torch.Tensor, index: int, num_steps: int) -> GuidanceContext:
        return GuidanceContext(self.y, x_t, t, index, num_steps)

    def passes(self, index: int, num_steps: int) -> int:
        """How many times the sampler runs this step: the largest ``n_steps`` of the active terms inside
        the multi-step window, else 1."""
        lo, hi = window_index(self.spec.repeat_stop, num_steps), window_index(self.spec.repeat_start, num_steps)
        if not lo < index < hi:
            return 1
        return max((t.n_steps for t in self.terms if t.active(index, num_steps)), default=1)

    def gradient(self, x0: torch.Tensor, ctx: GuidanceContext, pass_index: int = 0) -> torch.Tensor | None:
        """∇ of the summed losses w.r.t. the detached x̂₀ (zeroed inside holes), or None if no term is active."""
        active = [t for t in self.terms if t.active(ctx.index, ctx.num_steps) and pass_index < t.n_steps]
        if not active:
            return None
        with torch.enable_grad():
            x = x0.detach().float().requires_grad_(True)
            total = None
            for term in active:
                loss = term(x, ctx)
                key = term.name if term.name not in ctx.losses else f"{term.name}#{len(ctx.losses)}"
                ctx.losses[key] = loss.detach()
                total = loss if total is None else total + loss
            (grad,) = torch.autograd.grad(total, x)
        if self.hole is not None:
            grad = grad.masked_fill(self.hole, 0.0)
        return grad

    def apply(self, x_t: torch.Tensor, mean: torch.Tensor, noise: torch.Tensor, variance: torch.Tensor,
              grad: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """The guided sample from the proposal's deterministic part ``mean`` and noise part ``noise``.

        ``reference``: the proposal whose step length ‖x_t − x'‖ sets the dynamic scale, when it is not
        this one (DDIM passes the ancestral DDPM proposal, so that a scale means the same in both samplers).
        """
        s = self.spec.scale
        if self.spec.update == "classic":
            return (mean - variance * grad * s) + noise
        proposal = mean + noise
        dims = (2, 3) if self.spec.norm == "channel" else (1, 2, 3)
        step_norm = torch.linalg.vector_norm(x_t - (proposal if reference is None else reference), dim=dims, keepdim=True)
        grad_norm = torch.linalg.vector_norm(grad, dim=dims, keepdim=True)
        coef = torch.where(grad_norm > 0, step_norm / grad_norm.clamp_min(torch.finfo(grad.dtype).tiny), 0.0) * s
        return proposal - grad * coef

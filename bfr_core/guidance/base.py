"""The pieces every guidance term shares: the per-step context, targets, windows, tensor fitting."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["GuidanceContext", "GuidanceTerm", "Target", "fit_image", "fit_mask", "window_index", "gray"]

# A target image: a tensor (B or 1, 3, H, W) in [-1, 1]; a restorer ``f(x_t, y, t) -> image`` run at each
# step (PGDiff's smooth-semantics network); or None for the sampler's input image y.
Target = Union[torch.Tensor, nn.Module, Callable[..., torch.Tensor], None]


def window_index(fraction: float, num_steps: int) -> int:
    """``fraction`` of a K-step schedule as a step index, truncated like the released ``int(s·T)``."""
    return int(math.floor(fraction * num_steps + 1e-6))


@dataclass
class GuidanceContext:
    """What a term may look at during one sampler step (shared by the step's repeated passes).

    ``t`` holds the original-scale timesteps (B,), ``index`` the position in the sampled schedule of
    ``num_steps`` steps. ``cache`` keeps per-step results (the restorer's output) across passes, like
    the released code does. ``losses`` collects each active term's weighted loss (detached).
    """

    y: torch.Tensor | None
    x_t: torch.Tensor
    t: torch.Tensor
    index: int
    num_steps: int
    cache: dict[Any, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)

    def target(self, source: Target, what: str) -> torch.Tensor:
        """Resolve a :data:`Target` to a float32 image at this step (restorers run once per step)."""
        if isinstance(source, torch.Tensor):
            return source
        if self.y is None:
            raise InputError(f"{what} needs the sampler's input image, but none was given; pass the low-quality image or an explicit target.")
        if source is None:
            return self.y
        key = ("restorer", id(source))
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = source(self.x_t, self.y, self.t).float().clamp(-1.0, 1.0)
        return self.cache[key]


@dataclass(kw_only=True)
class GuidanceTerm:
    """One property of the output to steer towards: ``term(x0, ctx) -> weighted scalar loss``.

    ``start``/``stop``: the term is active for schedule indices i with ``stop·K ≤ i < start·K`` (1.0 = the
    first, noisiest step; 0.0 = the end), i.e. fractions of the sampled schedule, whatever K is.
    ``n_steps``: gradient passes per step inside the guidance's multi-step window (released: N).
    Subclasses implement :meth:`loss` (unweighted, sum-reduced like the released losses) and may fit
    their tensors to the sample in :meth:`bind`.
    """

    weight: float = 1.0
    start: float = 1.0
    stop: float = 0.0
    n_steps: int = 1

    name = "term"

    def __post_init__(self) -> None:
        if not (0.0 <= self.stop <= self.start <= 1.0):
            raise InputError(f"{self.name}: need 0 ≤ stop ≤ start ≤ 1 (fractions of the schedule), got start={self.start}, stop={self.stop}.")
        if self.n_steps < 1:
            raise InputError(f"{self.name}: n_steps must be at least 1, got {self.n_steps}.")

    def active(self, index: int, num_steps: int) -> bool:
        return window_index(self.stop, num_steps) <= index < window_index(self.start, num_steps)

    def bind(self, like: torch.Tensor) -> "GuidanceTerm":
        """A copy whose tensors sit on ``like``'s device, fitted to its batch and size."""
        return self

    def hole(self) -> torch.Tensor | None:
        """(B, 1, H, W) bool mask where the summed gradient is zeroed (inpainting holes, scratches)."""
        return None

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        return self.loss(x0, ctx) * self.weight

    def replace(self, **changes) -> "GuidanceTerm":
        return dataclasses.replace(self, **changes)


def gray(x: torch.Tensor) -> torch.Tensor:
    """PGDiff's lightness: the unweighted mean of R, G, B, repeated on three channels."""
    return x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)


def fit_image(img: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """(B or 1, 1 or 3, H, W) [-1, 1] image → float32 on ``like``'s device at its size (bilinear, antialiased)."""
    if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] not in (1, 3):
        raise InputError(f"{what} must be a (B, 3, H, W) tensor in [-1, 1]; got {getattr(img, 'shape', type(img).__name__)}. "
                         "ComfyUI IMAGEs go through bfr_core.images.to_model first.")
    if img.shape[0] not in (1, like.shape[0]):
        raise InputError(f"{what} has batch {img.shape[0]} but {like.shape[0]} images are sampled; pass one or one per image.")
    img = img.to(device=like.device, dtype=torch.float32)
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    if img.shape[-2:] != like.shape[-2:]:
        img = F.interpolate(img, size=like.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    return img.contiguous()


def fit_mask(mask: torch.Tensor, like: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """A hole mask ((B, H, W), (B, 1|3, H, W); 1 = missing) → float32 (B or 1, 1, H, W) at ``like``'s size.

    Resizing is bilinear, and any pixel with a non-zero value counts as a hole (as in the released code).
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (3, 4):
        raise InputError(f"{what} must be a (B, H, W) or (B, 1, H, W) tensor with 1 marking holes.")
    m = mask.to(device=like.device, dtype=torch.float32)
    m = m[:, None] if m.dim() == 3 else m.amax(dim=1, keepdim=True)
    if m.shape[0] not in (1, like.shape[0]):
        raise InputError(f"{what} has batch {m.shape[0]} but {like.shape[0]} images are sampled; pass one or one per image.")
    if m.shape[-2:] != like.shape[-2:]:
        m = F.interpolate(m, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return m.clamp(0.0, 1.0).contiguous()

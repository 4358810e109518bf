"""PGDiff's five tasks as ready-made :class:`CompositeGuidance` objects with the released defaults.

Loss weights are the released command-line defaults. The released code has one default guidance scale
(0.1) for every task; its README runs each task with its own, which the presets use: restoration 0.1
(README range 0.05–0.1), colourisation 0.01, inpainting 0.01, reference-based restoration 0.05, old
photos 0.002 (README range 0.0015–0.004 by damage). ``n_steps`` > 1 repeats each step inside
[repeat_stop, repeat_start] (released: N = 1, window 0.7–1.0).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .base import Target
from .composite import CompositeGuidance
from .terms import CELEBAHQ_MEAN, CELEBAHQ_STD, ColorStatistics, IdentityReference, Lightness, SmoothSemantics, UnmaskedRegion

__all__ = ["restoration", "colorization", "inpainting", "old_photo_restoration", "ref_restoration", "PRESETS"]


def restoration(restorer: Target, *, scale: float = 0.1, ss_weight: float = 1.0, n_steps: int = 1,
                repeat_start: float = 1.0, repeat_stop: float = 0.7) -> CompositeGuidance:
    """Blind restoration: smooth semantics from ``restorer`` (or any image), classic update."""
    return CompositeGuidance((SmoothSemantics(target=restorer, weight=ss_weight, n_steps=n_steps),), scale=scale,
                             update="classic", repeat_start=repeat_start, repeat_stop=repeat_stop)


def _color_term(weight, mean, std, reference, n_steps) -> ColorStatistics:
    if reference is not None:
        return ColorStatistics.from_image(reference, average=True, weight=weight, n_steps=n_steps)
    return ColorStatistics(mean=mean, std=std, weight=weight, n_steps=n_steps)


def colorization(*, scale: float = 0.01, lightness_weight: float = 1.0, color_weight: float = 0.05,
                 color_mean: torch.Tensor | Sequence[float] = CELEBAHQ_MEAN,
                 color_std: torch.Tensor | Sequence[float] = CELEBAHQ_STD, color_reference: torch.Tensor | None = None,
                 n_steps: int = 1, repeat_start: float = 1.0, repeat_stop: float = 0.7) -> CompositeGuidance:
    """Colourisation: the input's lightness + colour statistics (CelebA-HQ averages, or those of
    ``color_reference`` images), dynamic scale with per-channel norms."""
    terms = (Lightness(weight=lightness_weight, n_steps=n_steps),
             _color_term(color_weight, color_mean, color_std, color_reference, n_steps))
    return CompositeGuidance(terms, scale=scale, update="dynamic", norm="channel",
                             repeat_start=repeat_start, repeat_stop=repeat_stop)


def inpainting(mask: torch.Tensor, *, scale: float = 0.01, unmasked_weight: float = 1.0, n_steps: int = 1,
               repeat_start: float = 1.0, repeat_stop: float = 0.7) -> CompositeGuidance:
    """Inpainting: keep the pixels outside ``mask`` (1 = hole), dynamic scale with global norms."""
    return CompositeGuidance((UnmaskedRegion(mask=mask, weight=unmasked_weight, n_steps=n_steps),), scale=scale,
                             update="dynamic", norm="global", repeat_start=repeat_start, repeat_stop=repeat_stop)


def old_photo_restoration(restorer: Target, mask: torch.Tensor | None = None, *, scale: float = 0.002,
                          lightness_weight: float = 1.0, color_weight: float = 0.5,
                          color_mean: torch.Tensor | Sequence[float] = CELEBAHQ_MEAN,
                          color_std: torch.Tensor | Sequence[float] = CELEBAHQ_STD, color_reference: torch.Tensor | None = None,
                          n_steps: int = 1, repeat_start: float = 1.0, repeat_stop: float = 0.7) -> CompositeGuidance:
    """Old photos: the restorer's lightness outside scratches (``mask``, 1 = scratch) + colour statistics,
    dynamic scale with per-channel norms. As released, the restorer's colours are not used."""
    terms = (Lightness(target=restorer, mask=mask, weight=lightness_weight, n_steps=n_steps),
             _color_term(color_weight, color_mean, color_std, color_reference, n_steps))
    return CompositeGuidance(terms, scale=scale, update="dynamic", norm="channel",
                             repeat_start=repeat_start, repeat_stop=repeat_stop)


def ref_restoration(restorer: Target, arcface: nn.Module, reference: torch.Tensor, *, scale: float = 0.05,
                    ss_weight: float = 1.0, ref_weight: float = 25.0, metric: str = "mse", n_steps: int = 1,
                    repeat_start: float = 1.0, repeat_stop: float = 0.7) -> CompositeGuidance:
    """Reference-based restoration: smooth semantics + ArcFace identity of ``reference``, classic update.
    Use ``metric="cosine"`` with ``ref_weight=1e4`` for the paper's cosine form."""
    terms = (SmoothSemantics(target=restorer, weight=ss_weight, n_steps=n_steps),
             IdentityReference(arcface=arcface, reference=reference, weight=ref_weight, metric=metric, n_steps=n_steps))
    return CompositeGuidance(terms, scale=scale, update="classic", repeat_start=repeat_start, repeat_stop=repeat_stop)


PRESETS: dict[str, Callable[..., CompositeGuidance]] = {
    "restoration": restoration,
    "colorization": colorization,
    "inpainting": inpainting,
    "old_photo_restoration": old_photo_restoration,
    "ref_restoration": ref_restoration,
}

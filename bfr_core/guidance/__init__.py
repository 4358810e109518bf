"""PGDiff partial guidance: loss terms on the predicted clean image, their sum and update rules, task presets."""

from . import presets
from .base import GuidanceContext, GuidanceTerm, Target, gray
from .composite import BoundGuidance, CompositeGuidance
from .terms import (
    CELEBAHQ_MEAN,
    CELEBAHQ_STD,
    Adversarial,
    ColorStatistics,
    IdentityReference,
    Lightness,
    Perceptual,
    SmoothSemantics,
    UnmaskedRegion,
    color_stats,
)

__all__ = [
    "GuidanceContext", "GuidanceTerm", "Target", "gray", "CompositeGuidance", "BoundGuidance",
    "SmoothSemantics", "Lightness", "ColorStatistics", "UnmaskedRegion", "IdentityReference", "Perceptual",
    "Adversarial", "color_stats", "CELEBAHQ_MEAN", "CELEBAHQ_STD", "presets",
]

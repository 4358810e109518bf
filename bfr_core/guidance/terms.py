"""PGDiff's guidance terms. Each maps the predicted clean image x̂₀ to a weighted scalar loss.

The released code sums every loss over pixels (``reduction='sum'``); the terms do the same, so the
weights and guidance scales of the released commands carry over unchanged. Perceptual and GAN guidance
are described in the paper but absent from the released code; they follow the same conventions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.arcface import arcface_input
from .base import GuidanceContext, GuidanceTerm, Target, fit_image, fit_mask, gray

log = logging.getLogger(__name__)

__all__ = [
    "CELEBAHQ_MEAN", "CELEBAHQ_STD", "SmoothSemantics", "Lightness", "ColorStatistics", "UnmaskedRegion",
    "IdentityReference", "Perceptual", "Adversarial", "color_stats",
]

# Average per-channel mean / std of CelebA-HQ faces in [-1, 1] RGB (PGDiff's default colour target).
CELEBAHQ_MEAN = (0.03202754, -0.16308397, -0.26475719)
CELEBAHQ_STD = (0.53549316, 0.47539538, 0.46814889)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _bind_target(target: Target, like: torch.Tensor, what: str) -> Target:
    return fit_image(target, like, what) if isinstance(target, torch.Tensor) else target


def _dtype_of(module: nn.Module) -> torch.dtype:
    p = next(module.parameters(), None)
    return p.dtype if p is not None else torch.float32


def _warn_training(module: nn.Module, what: str) -> None:
    if module.training:
        log.warning("%s is in training mode (batch-norm and dropout behave differently); call .eval() on it.", what)


@dataclass(kw_only=True)
class SmoothSemantics(GuidanceTerm):
    """‖f − x̂₀‖²: pull x̂₀ towards a smooth restoration f.

    ``target``: a restorer ``f(x_t, y, t)`` (PGDiff's RRDB network, fed the current noisy sample, the
    input and the original-scale timestep, run once per step), any image (e.g. another restorer's
    output: VSPBFR, PLTrans, CodeFormer), or None for the sampler's input itself.
    """

    target: Target = None
    name = "smooth_semantics"

    def bind(self, like: torch.Tensor) -> "SmoothSemantics":
        return self.replace(target=_bind_target(self.target, like, "smooth-semantics target"))

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        return (ctx.target(self.target, self.name) - x0).pow(2).sum()


@dataclass(kw_only=True)
class Lightness(GuidanceTerm):
    """‖gray(target) − gray(x̂₀)‖² outside holes, gray = mean of R, G, B (colourisation, old photos).

    ``target`` defaults to the sampler's input (the grayscale photo); old-photo restoration uses the
    restorer's output. With a ``mask`` (1 = scratch) those pixels are left out and the whole guidance
    gradient is zeroed there.
    """

    target: Target = None
    mask: torch.Tensor | None = None
    name = "lightness"

    def bind(self, like: torch.Tensor) -> "Lightness":
        return self.replace(target=_bind_target(self.target, like, "lightness target"),
                            mask=None if self.mask is None else fit_mask(self.mask, like))

    def hole(self) -> torch.Tensor | None:
        return None if self.mask is None else self.mask > 0

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        diff = gray(ctx.target(self.target, self.name)) - gray(x0)
        if self.mask is not None:
            diff = diff * (self.mask == 0)
        return diff.pow(2).sum()


def color_stats(image: torch.Tensor, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ((B, 3) each) of [-1, 1] RGB images, as PGDiff's statistics script
    computes them (population variance + 1e-5). ``average`` averages them over the batch (its folder mode)."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise InputError(f"colour statistics need (B, 3, H, W) images in [-1, 1], got {tuple(image.shape)}")
    flat = image.float().flatten(2)
    mean, std = flat.mean(2), (flat.var(2, unbiased=False) + 1e-5).sqrt()
    if average:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return mean, std


@dataclass(kw_only=True)
class ColorStatistics(GuidanceTerm):
    """‖x̂₀ − clip(AdaIN(x̂₀; μ*, σ*))‖²: give x̂₀ the target channel statistics.

    As released, the gradient flows through both sides (the AdaIN target is not detached) and x̂₀'s own
    statistics use the unbiased variance + 1e-5. ``mean``/``std``: 3 values or (B or 1, 3) tensors in
    [-1, 1] RGB; CelebA-HQ averages by default; :meth:`from_image` takes them from reference images.
    """

    mean: torch.Tensor | Sequence[float] = CELEBAHQ_MEAN
    std: torch.Tensor | Sequence[float] = CELEBAHQ_STD
    weight: float = 0.05
    name = "color_statistics"

    @classmethod
    def from_image(cls, image: torch.Tensor, average: bool = False, **kwargs) -> "ColorStatistics":
        mean, std = color_stats(image, average)
        return cls(mean=mean, std=std, **kwargs)

    def bind(self, like: torch.Tensor) -> "ColorStatistics":
        def fit(v, what):
            v = torch.as_tensor(v, dtype=torch.float32, device=like.device).reshape(-1, 3)
            if v.shape[0] not in (1, like.shape[0]):
                raise InputError(f"colour {what} has {v.shape[0]} rows for {like.shape[0]} images; give one or one per image.")
            return v[:, :, None, None]
        return self.replace(mean=fit(self.mean, "mean"), std=fit(self.std, "std"))

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        flat = x0.flatten(2)
        mu = flat.mean(2)[:, :, None, None]
        sigma = (flat.var(2) + 1e-5).sqrt()[:, :, None, None]
        styled = ((x0 - mu) / sigma * self.std + self.mean).clamp(-1.0, 1.0)
        return (x0 - styled).pow(2).sum()


@dataclass(kw_only=True)
class UnmaskedRegion(GuidanceTerm):
    """‖(y − x̂₀)·(1 − M)‖²: keep the known pixels (inpainting); the gradient is zeroed inside holes.

    ``mask``: 1 (any non-zero value) = missing. ``target`` defaults to the sampler's input.
    """

    mask: torch.Tensor
    target: Target = None
    name = "unmasked_region"

    def bind(self, like: torch.Tensor) -> "UnmaskedRegion":
        return self.replace(mask=fit_mask(self.mask, like), target=_bind_target(self.target, like, "inpainting target"))

    def hole(self) -> torch.Tensor | None:
        return self.mask > 0

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        return ((ctx.target(self.target, self.name) - x0) * (self.mask == 0)).pow(2).sum()


@dataclass(kw_only=True)
class IdentityReference(GuidanceTerm):
    """Identity of a reference face through ArcFace embeddings of the whole 112×112-resized faces.

    ``metric="mse"`` (released default, weight 25): ‖A(x̂₀) − A(ref)‖²; ``"cosine"`` (the paper's form,
    released alternative with weight 1e4): −cos(A(x̂₀), A(ref)).
    """

    arcface: nn.Module
    reference: torch.Tensor
    metric: str = "mse"
    weight: float = 25.0
    _ref_embedding: torch.Tensor | None = field(default=None, repr=False)
    name = "identity"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric not in ("mse", "cosine"):
            raise InputError(f"identity metric must be 'mse' or 'cosine', got {self.metric!r}")

    def _embed(self, face: torch.Tensor) -> torch.Tensor:
        size = getattr(getattr(self.arcface, "config", None), "input_size", 112)
        return self.arcface(arcface_input(face, size).to(_dtype_of(self.arcface))).float()

    def bind(self, like: torch.Tensor) -> "IdentityReference":
        _warn_training(self.arcface, "the ArcFace network")
        ref = fit_image(self.reference, like, "identity reference")
        with torch.no_grad():
            emb = self._embed(ref)
        return self.replace(reference=ref, _ref_embedding=emb)

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        if self._ref_embedding is None:
            raise InputError("IdentityReference was used before bind(); the sampler's guidance binding does this.")
        emb = self._embed(x0)
        if self.metric == "mse":
            return (emb - self._ref_embedding).pow(2).sum()
        return -F.cosine_similarity(emb, self._ref_embedding.expand_as(emb), dim=1, eps=1e-6).sum()


@dataclass(kw_only=True)
class Perceptual(GuidanceTerm):
    """Σ_l ‖φ_l(x̂₀) − φ_l(target)‖² over VGG16 ReLU features (paper §4.6; not in the released code).

    ``vgg``: torchvision's ``vgg16`` (or its ``.features``) with the caller's weights. ``layers`` index
    ``vgg.features``: 3, 8, 15, 22 are relu1_2, relu2_2, relu3_3, relu4_3. Inputs are mapped from
    [-1, 1] to ImageNet normalisation. ``target`` as for :class:`SmoothSemantics`.
    """

    vgg: nn.Module
    target: Target = None
    layers: tuple[int, ...] = (3, 8, 15, 22)
    weight: float = 1e-2
    _target_features: list[torch.Tensor] | None = field(default=None, repr=False)
    name = "perceptual"

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        seq = getattr(self.vgg, "features", self.vgg)
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        h = (((x + 1) / 2 - mean) / std).to(_dtype_of(self.vgg))
        out, last = [], max(self.layers)
        for i, layer in enumerate(seq):
            h = layer(h)
            if i in self.layers:
                out.append(h.float())
            if i >= last:
                break
        return out

    def bind(self, like: torch.Tensor) -> "Perceptual":
        _warn_training(self.vgg, "the VGG network")
        target = _bind_target(self.target, like, "perceptual target")
        feats = None
        if isinstance(target, torch.Tensor):
            with torch.no_grad():
                feats = self._features(target)
        return self.replace(target=target, _target_features=feats)

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        feats = self._target_features
        if feats is None:
            key = ("vgg", id(self.vgg), id(self.target))
            if key not in ctx.cache:
                with torch.no_grad():
                    ctx.cache[key] = self._features(ctx.target(self.target, self.name))
            feats = ctx.cache[key]
        return sum((a - b).pow(2).sum() for a, b in zip(self._features(x0), feats))


@dataclass(kw_only=True)
class Adversarial(GuidanceTerm):
    """Σ softplus(−D(x̂₀)): the non-saturating GAN generator loss under a face discriminator
    (paper §4.6; not in the released code). ``discriminator``: any module mapping [-1, 1] images to
    realness logits (e.g. a StyleGAN2 discriminator); x̂₀ is resized to ``size`` first (default: the
    module's ``config.size`` when it has one). ``per_image``: run it on one image at a time."""

    discriminator: nn.Module
    size: int | None = None
    per_image: bool = True
    weight: float = 1e-2
    name = "adversarial"

    def bind(self, like: torch.Tensor) -> "Adversarial":
        _warn_training(self.discriminator, "the discriminator")
        return self

    def loss(self, x0: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        x = x0
        size = self.size or getattr(getattr(self.discriminator, "config", None), "size", None)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.to(_dtype_of(self.discriminator))
        # StyleGAN2's minibatch-stddev layer mixes the images of a batch; one at a time keeps them independent
        logits = [self.discriminator(x[i: i + 1]) for i in range(len(x))] if self.per_image else [self.discriminator(x)]
        return sum(F.softplus(-out.float()).sum() for out in logits)

"""Loss terms chosen by name (``losses: [{type: mse, weight: 1}, {type: lpips, weight: 0.1}]``).

Every term compares two (B, 3, H, W) images in [-1, 1] and returns a scalar. LPIPS and identity use
real networks: LPIPS through the ``lpips`` package with weights found offline by
:func:`bfr_core.metrics.load_lpips`, identity through insightface's ArcFace loaded by
:func:`bfr_core.weights.load_model`. Either can be built with random weights for tests only
(``random_init: true``); that is logged loudly and written into the model card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bfr_core.errors import WeightsError

from .config import ConfigError, LossSpec
from .registry import LOSSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossType:
    """A registered loss: its options dataclass and ``build(options, device) -> module(pred, target)``."""

    options: type
    build: Callable[[Any, torch.device], nn.Module]
    description: str = ""


def register_loss(name: str, options: type, description: str = ""):
    def deco(build):
        LOSSES.register(name, LossType(options, build, description))
        return build

    return deco


@dataclass
class NoOptions:
    pass


class _Pixel(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(pred.float(), target.float())


@register_loss("mse", NoOptions, "mean squared error")
def _mse(options: NoOptions, device: torch.device) -> nn.Module:
    return _Pixel(F.mse_loss)


@register_loss("l1", NoOptions, "mean absolute error")
def _l1(options: NoOptions, device: torch.device) -> nn.Module:
    return _Pixel(F.l1_loss)


@dataclass
class LPIPSOptions:
    net: Literal["alex", "vgg"] = "vgg"
    weights: str | None = None  # an lpips_{net}.safetensors file; default: bfr_core.metrics' search
    random_init: bool = False  # tests only: random backbone and heads, not a perceptual loss


class LPIPSLoss(nn.Module):
    """Mean LPIPS v0.1 distance; the network is frozen, gradients flow to the prediction."""

    def __init__(self, net: nn.Module, label: str):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.label = label

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(pred.float(), target.float(), normalize=False).mean()

    def train(self, mode: bool = True) -> "LPIPSLoss":  # the network stays in eval mode
        return self


@register_loss("lpips", LPIPSOptions, "LPIPS v0.1 through the lpips package")
def _lpips(options: LPIPSOptions, device: torch.device) -> nn.Module:
    if options.random_init:
        try:
            import lpips
        except ImportError as e:
            raise ConfigError("the lpips loss needs the `lpips` package: pip install lpips") from e
        with torch.random.fork_rng(devices=[]):  # a fixed random net that leaves the global RNG alone
            torch.manual_seed(0)
            net = lpips.LPIPS(pretrained=False, net=options.net, version="0.1", pnet_rand=True, verbose=False)
        log.warning("LPIPS loss uses RANDOM weights (random_init: true): for tests only, it is not a perceptual loss")
        return LPIPSLoss(net, f"LPIPS-{options.net} (RANDOM INIT, test only)").to(device)
    from bfr_core.metrics import load_lpips

    try:
        net = load_lpips(options.net, device=device, weights=options.weights)
    except WeightsError as e:
        raise WeightsError(f"the lpips loss cannot start: {e}") from e
    return LPIPSLoss(net, f"LPIPS-{options.net} v0.1")


@dataclass
class IdentityOptions:
    weights: str = "arcface-ms1mv3-r50"  # registry id or file of an insightface ArcFace (iresnet)
    random_init: bool = False  # tests only
    random_config: dict[str, Any] = field(default_factory=dict)  # IResNetConfig fields for random_init


class IdentityLoss(nn.Module):
    """1 − cosine similarity of ArcFace embeddings (whole crop resized to 112 px, as PGDiff feeds it)."""

    def __init__(self, net: nn.Module, label: str):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.label = label

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.net.embed(target.float())
        emb = self.net.embed(pred.float())
        return (1 - F.cosine_similarity(emb, ref, dim=1)).mean()

    def train(self, mode: bool = True) -> "IdentityLoss":
        return self


IDENTITY_HELP = (
    "The identity loss needs insightface's ArcFace weights `ms1mv3_arcface_r50_fp16.pth` (registry id "
    "arcface-ms1mv3-r50; non-commercial licence): download it from the insightface model zoo / PGDiff README "
    "and put it in ComfyUI/models/bfr/ (or $BFR_MODELS_DIR), or set the loss option weights: PATH."
)


@register_loss("identity", IdentityOptions, "ArcFace identity (1 - cosine)")
def _identity(options: IdentityOptions, device: torch.device) -> nn.Module:
    from bfr_core.models.arcface import IResNet, IResNetConfig

    if options.random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = IResNet(IResNetConfig(**options.random_config))
        log.warning("identity loss uses a RANDOM ArcFace (random_init: true): for tests only")
        return IdentityLoss(net, "ArcFace (RANDOM INIT, test only)").to(device)
    from bfr_core.weights import load_model

    try:
        loaded = load_model(options.weights, "arcface_iresnet", device=device, allow_download=False, cache=False)
    except WeightsError as e:
        raise WeightsError(f"{IDENTITY_HELP}\n({e})") from e
    return IdentityLoss(loaded.model, f"ArcFace ({loaded.path.name})")


class WeightedLoss(nn.Module):
    """The weighted sum of the configured terms; also returns each term (unweighted) for logging."""

    def __init__(self, terms: list[tuple[str, float, nn.Module]]):
        super().__init__()
        self.names = [n for n, _, _ in terms]
        self.weights = [w for _, w, _ in terms]
        self.terms = nn.ModuleList(m for _, _, m in terms)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {}
        total = pred.new_zeros((), dtype=torch.float32)
        for name, w, term in zip(self.names, self.weights, self.terms):
            value = term(pred, target)
            parts[name] = value.detach()
            if w:
                total = total + w * value
        return total, parts

    def describe(self) -> list[str]:
        return [f"{w:g} × {getattr(t, 'label', n)}" for n, w, t in zip(self.names, self.weights, self.terms)]


def build_losses(specs: list[LossSpec], device: torch.device) -> WeightedLoss:
    """One :class:`WeightedLoss` from the config's ``losses`` list (names made unique: mse, lpips, lpips_2)."""
    terms, seen = [], {}
    for spec in specs:
        seen[spec.type] = seen.get(spec.type, 0) + 1
        name = spec.type if seen[spec.type] == 1 else f"{spec.type}_{seen[spec.type]}"
        terms.append((name, spec.weight, LOSSES.get(spec.type).build(spec.options, device)))
    return WeightedLoss(terms)

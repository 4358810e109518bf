"""Loss terms chosen by name (``losses: [{type: mse, weight: 1}, {type: lpips, weight: 0.1}]``).

Every term compares two (B, 3, H, W) images in [-1, 1] and returns a scalar. LPIPS and identity use
real networks: LPIPS through the ``lpips`` package with weights found offline by
:func:`bfr_core.metrics.load_lpips`, identity through insightface's ArcFace (or FaceShifter's ResNet-101,
the network VSPBFR's release uses) loaded by
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


#: Identity networks the loss can use: bfr_core architecture → (model module, class, config class).
IDENTITY_ARCHITECTURES = {
    "arcface_iresnet": ("bfr_core.models.arcface", "IResNet", "IResNetConfig"),
    "faceshifter_arcface_r101": ("bfr_core.models.faceshifter_arcface", "FaceShifterArcFace", "FaceShifterArcFaceConfig"),
}


@dataclass
class VGGFeatureOptions:
    weights: str | None = None  # an lpips_vgg.safetensors file (its VGG16 trunk is used); default: bfr_core.metrics' search
    random_init: bool = False  # tests only: a random VGG16, not a perceptual loss


class VGGFeatureLoss(nn.Module):
    """Σ over VGG16's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the mean squared feature difference.

    The plain perceptual term ‖φ(ŷ) − φ(y)‖² (PLTrans Eq. 10), without LPIPS's channel normalisation and learned
    heads. The ImageNet VGG16 trunk and its input scaling are taken from the LPIPS-VGG network, whose weights are
    found offline (torchvision would download them); the target's features are computed without gradient.
    """

    def __init__(self, lpips_net: nn.Module, label: str):
        super().__init__()
        self.scaling = lpips_net.scaling_layer.eval()
        self.vgg = lpips_net.net.eval().requires_grad_(False)
        self.label = label

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.vgg(self.scaling(target.float()))
        got = self.vgg(self.scaling(pred.float()))
        return sum(F.mse_loss(a, b) for a, b in zip(got, want))

    def train(self, mode: bool = True) -> "VGGFeatureLoss":
        return self


@register_loss("vgg_feature", VGGFeatureOptions, "VGG16 feature MSE (sum over five layers)")
def _vgg_feature(options: VGGFeatureOptions, device: torch.device) -> nn.Module:
    net = _lpips(LPIPSOptions(net="vgg", weights=options.weights, random_init=options.random_init), device).net
    label = "VGG16 features (RANDOM INIT, test only)" if options.random_init else "VGG16 features (ImageNet)"
    return VGGFeatureLoss(net, label).to(device)


@dataclass
class IdentityOptions:
    # registry id or file: insightface's ArcFace iresnet (arcface-ms1mv3-r50) or FaceShifter's ResNet-101/256
    # (vspbfr-arcface, the network VSPBFR's release trains with)
    weights: str = "arcface-ms1mv3-r50"
    random_init: bool = False  # tests only
    random_arch: Literal["arcface_iresnet", "faceshifter_arcface_r101"] = "arcface_iresnet"  # for random_init
    random_config: dict[str, Any] = field(default_factory=dict)  # that architecture's config fields, for random_init


class IdentityLoss(nn.Module):
    """1 − cosine similarity of identity embeddings (whole crop resized to 112 px by the network's ``embed``)."""

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
IDENTITY_HELP_VSPBFR = (
    "The identity loss with weights: vspbfr-arcface needs FaceShifter's identity network `Arcface.pth` "
    "(torchvision ResNet-101/256, from the Hugging Face repo Wanglong2/VSPBFR; non-commercial): download it and put "
    "it in ComfyUI/models/bfr/ (or $BFR_MODELS_DIR), or set the loss option weights: PATH."
)


@register_loss("identity", IdentityOptions, "identity (1 - cosine of ArcFace or FaceShifter embeddings)")
def _identity(options: IdentityOptions, device: torch.device) -> nn.Module:
    import importlib

    if options.random_init:
        module, cls_name, config_name = IDENTITY_ARCHITECTURES[options.random_arch]
        mod = importlib.import_module(module)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = getattr(mod, cls_name)(getattr(mod, config_name)(**options.random_config))
        log.warning("identity loss uses a RANDOM %s (random_init: true): for tests only", options.random_arch)
        return IdentityLoss(net, f"{options.random_arch} (RANDOM INIT, test only)").to(device)
    from bfr_core.weights import load_model

    help_text = IDENTITY_HELP_VSPBFR if "vspbfr" in options.weights.lower() or "arcface.pth" in options.weights.lower() \
        else IDENTITY_HELP
    try:
        loaded = load_model(options.weights, device=device, allow_download=False, cache=False)
    except WeightsError as e:
        raise WeightsError(f"{help_text}\n({e})") from e
    if loaded.architecture not in IDENTITY_ARCHITECTURES:
        raise WeightsError(f"{options.weights} holds a {loaded.architecture} model, not an identity network "
                           f"({', '.join(IDENTITY_ARCHITECTURES)}).\n{help_text}")
    name = "ArcFace" if loaded.architecture == "arcface_iresnet" else "FaceShifter ResNet-101"
    return IdentityLoss(loaded.model, f"{name} ({loaded.path.name})")


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

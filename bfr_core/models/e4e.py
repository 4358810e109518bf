"""e4e (encoder4editing) style encoder: an image to W+ codes of a StyleGAN2 generator.

VSPBFR's stage-1 style encoder is e4e's ``Encoder4Editing(50, 'ir_se')`` for a 1024 px StyleGAN2, fine-tuned on
degraded faces. Backbone: IR-SE50 (the ArcFace ResNet variant with squeeze-excitation). Its outputs after the
second, third and fourth stages (64, 32, 16 px for a 256 px input) feed an FPN, and 18 ``GradualStyleBlock``s
(strided 3×3 convs down to 1×1, then an equalised linear layer) give the W+ rows: row 0 (``w0``, from the 16 px
map) is copied to every row, and each row i ≥ 1 adds its own delta (3 rows from the 16 px map, 4 from 32 px,
11 from 64 px). The average latent ``latent_avg`` (18, 512) is added at the end.

Parameter names follow the official checkpoint's ``encoder.*`` keys. ``latent_avg`` is stored beside the state
dict in the official file (top-level ``latent_avg``); here it is a persistent buffer, so our state dict is the
official encoder keys plus ``latent_avg`` (the weights loader maps that one key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from .stylegan2 import EqualLinear

__all__ = ["E4EConfig", "Encoder4Editing", "config_from_state_dict"]


@dataclass
class E4EConfig:
    """Sizes of the encoder; the defaults build VSPBFR's e4e for a 1024 px StyleGAN2 (267,136,704 parameters)."""

    n_styles: int = 18  # W+ rows: 2·log2(StyleGAN size) − 2
    style_dim: int = 512
    input_size: int = 256  # images are resized (bilinear) to this size first
    in_channels: int = 3
    units: tuple[int, ...] = (3, 4, 14, 3)  # IR-SE50 bottleneck units per stage
    depths: tuple[int, ...] = (64, 128, 256, 512)
    se_reduction: int = 16
    coarse_index: int = 3  # rows [0, 3) come from the 16 px map, [3, 7) from 32 px, the rest from 64 px
    middle_index: int = 7

    def __post_init__(self) -> None:
        self.units, self.depths = tuple(self.units), tuple(self.depths)
        if len(self.units) != 4 or len(self.depths) != 4:
            raise ValueError("IR-SE backbones have four stages (units and depths need four entries)")
        if self.input_size % 16 or self.input_size < 64:
            raise ValueError(f"input_size must be a multiple of 16 and ≥ 64, got {self.input_size}")


class SEModule(nn.Module):
    """Squeeze-excitation: global pool → 1×1 reduce → ReLU → 1×1 expand → sigmoid gate."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Subsample(nn.Module):
    """Identity shortcut with stride (the official ``MaxPool2d(1, stride)``: keep every stride-th pixel)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]


class BottleneckIRSE(nn.Module):
    """IR-SE unit: BN → conv3 → PReLU → conv3 (strided) → BN → SE, plus a (projected) shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int, se_reduction: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SEModule(depth, se_reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3×3 convs with LeakyReLU(0.01) down to 1×1, then an EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        for _ in range(int(math.log2(spatial)) - 1):
            layers += [nn.Conv2d(out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_c))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear (align_corners=True, as e4e) upsampling of ``x`` to ``y``'s size, plus ``y``."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] → W+ codes (B, n_styles, style_dim), ``latent_avg`` included.

    ``progressive_stage`` is the number of delta rows in use (e4e trains them progressively); the default, all
    rows, is inference.
    """

    def __init__(self, config: E4EConfig | None = None):
        super().__init__()
        self.config = cfg = config or E4EConfig()
        d = cfg.depths
        self.input_layer = nn.Sequential(nn.Conv2d(cfg.in_channels, d[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(d[0]), nn.PReLU(d[0]))
        units: list[nn.Module] = []
        in_c = d[0]
        for depth, n in zip(d, cfg.units):
            for j in range(n):
                units.append(BottleneckIRSE(in_c if j == 0 else depth, depth, 2 if j == 0 else 1, cfg.se_reduction))
            in_c = depth
        self.body = nn.Sequential(*units)
        # Taps after stages 2, 3, 4 (body indices 6, 20, 23 in IR-SE50).
        ends = [sum(cfg.units[: s + 1]) - 1 for s in range(4)]
        self._taps = (ends[1], ends[2], ends[3])
        c3_size = cfg.input_size // 16
        self.styles = nn.ModuleList()
        for i in range(cfg.n_styles):
            spatial = c3_size if i < cfg.coarse_index else 2 * c3_size if i < cfg.middle_index else 4 * c3_size
            self.styles.append(GradualStyleBlock(d[3], cfg.style_dim, spatial))
        self.latlayer1 = nn.Conv2d(d[2], d[3], 1)
        self.latlayer2 = nn.Conv2d(d[1], d[3], 1)
        self.register_buffer("latent_avg", torch.zeros(cfg.n_styles, cfg.style_dim))
        self.progressive_stage = cfg.n_styles

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if images.ndim != 4 or images.shape[1] != cfg.in_channels:
            raise InputError(f"the style encoder takes (batch, {cfg.in_channels}, H, W) images in [-1, 1], "
                             f"got shape {tuple(images.shape)}")
        x = images
        if x.shape[-2:] != (cfg.input_size, cfg.input_size):
            x = F.interpolate(x, size=(cfg.input_size, cfg.input_size), mode="bilinear", align_corners=False)
        x = self.input_layer(x)
        c1 = c2 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == self._taps[0]:
                c1 = x
            elif i == self._taps[1]:
                c2 = x
        c3 = x
        w = self.styles[0](c3).unsqueeze(1).repeat(1, cfg.n_styles, 1)
        features = c3
        p2 = None
        for i in range(1, min(self.progressive_stage + 1, cfg.n_styles)):
            if i == cfg.coarse_index:
                p2 = features = _upsample_add(c3, self.latlayer1(c2))
            elif i == cfg.middle_index:
                features = _upsample_add(p2, self.latlayer2(c1))
            w[:, i] += self.styles[i](features)
        return w + self.latent_avg.to(w.dtype)


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> E4EConfig:
    """The encoder configuration with exactly the shapes in ``sd`` (``latent_avg`` may be absent)."""
    try:
        n_units = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
        units_depth = [sd[f"body.{i}.res_layer.1.weight"].shape[0] for i in range(n_units)]
        n_styles = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("styles."))
        style_dim = sd["styles.0.linear.weight"].shape[0]
        in_channels = sd["input_layer.0.weight"].shape[1]
        se_reduction = units_depth[0] // sd["body.0.res_layer.5.fc1.weight"].shape[0]
        n_coarse_convs = len([k for k in sd if k.startswith("styles.0.convs.") and k.endswith(".weight")])
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not an e4e encoder state dict ({e!r})") from None
    # Stages start where the depth changes (the stride-2 units of equal width carry no trace of their stride).
    depths, units = [], []
    for dep in units_depth:
        if depths and depths[-1] == dep:
            units[-1] += 1
        else:
            depths.append(dep)
            units.append(1)
    if len(depths) != 4 or n_styles <= E4EConfig.middle_index:
        raise WeightsError(f"cannot read an e4e encoder from this state dict: unit widths {units_depth} do not form "
                           f"four stages of different widths, or its {n_styles} style blocks are too few")
    return E4EConfig(n_styles=n_styles, style_dim=style_dim, in_channels=in_channels, units=tuple(units),
                     depths=tuple(depths), se_reduction=se_reduction, input_size=16 * 2 ** n_coarse_convs)

"""The built-in compact restorer: a small NAFNet-style U-Net that runs on a pixel-unshuffled face.

Why this design (see the model card ``bfr_core/data/compact_restorer.md`` for the measurements): inputs
degraded ×4–×8 carry their information at 1/4–1/8 of the crop size, so the network works there. The
512² crop is pixel-unshuffled ×4 (48 channels at 128²), a U-Net of NAFNet blocks (layer norm, 1×1
expand, depthwise 3×3, simple gate; no nonlinear activations, Chen et al. 2022) runs at 128² down to
16², and a 1×1 projection, pixel shuffle and one 3×3 convolution at full size give a residual that is
added to the input. The blocks leave out NAFNet's channel attention (a global average pool): trained
on crops and run on whole faces, a global pool would see other statistics at test time. Depthwise and
1×1 convolutions keep a 512² face at 2.9 GMAC (4.3 M parameters, an 8.7 MB fp16 file), about a second
on 2 CPU cores. No time conditioning, no noise: one deterministic forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["CompactRestorerConfig", "CompactRestorer", "config_from_state_dict"]


@dataclass
class CompactRestorerConfig:
    """Sizes of the compact restorer; the defaults build the shipped model."""

    image_channels: int = 3
    size: int = 512  # side of the aligned crops it was trained for (the network itself takes any size)
    unshuffle: int = 4  # the U-Net runs at 1/unshuffle of the crop size
    width: int = 32  # channels of the first level; level i has width·2^i
    enc_blocks: tuple[int, ...] = (2, 2, 4)  # blocks per encoder level (one 2× downsampling after each)
    middle_blocks: int = 8
    dec_blocks: tuple[int, ...] = (2, 2, 2)  # blocks per decoder level, deepest first
    expand: int = 2  # channel expansion inside a block before the simple gate
    tail_channels: int = 8  # channels at full resolution before the last 3×3 convolution

    def __post_init__(self) -> None:
        self.enc_blocks, self.dec_blocks = tuple(self.enc_blocks), tuple(self.dec_blocks)
        if len(self.enc_blocks) != len(self.dec_blocks):
            raise InputError("enc_blocks and dec_blocks must have one entry per level")
        if self.unshuffle < 1 or self.width < 1 or self.expand < 1 or self.tail_channels < 1:
            raise InputError("unshuffle, width, expand and tail_channels must be ≥ 1")

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (inputs are padded to it)."""
        return self.unshuffle * 2 ** len(self.enc_blocks)


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of every pixel (NCHW), with per-channel affine weights."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # statistics in float32 also under bf16/fp16 autocast
        var, mu = torch.var_mean(xf, 1, unbiased=False, keepdim=True)
        y = torch.addcmul(self.bias[:, None, None].float(), (xf - mu) * torch.rsqrt(var + self.eps), self.weight[:, None, None].float())
        return y.to(x.dtype)


def _gate(x: torch.Tensor) -> torch.Tensor:
    """NAFNet's simple gate: split the channels in two halves and multiply them."""
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    """Spatial mixing (1×1 → depthwise 3×3 → gate → 1×1) and a gated 1×1 feed-forward, each a scaled residual."""

    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        h = c * expand
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, h, 1)
        self.dwconv = nn.Conv2d(h, h, 3, padding=1, groups=h)
        self.conv2 = nn.Conv2d(h // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv3 = nn.Conv2d(c, h, 1)
        self.conv4 = nn.Conv2d(h // 2, c, 1)
        # Residual scales start at zero, so every block starts as the identity (NAFNet's beta/gamma).
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(_gate(self.dwconv(self.conv1(self.norm1(x)))))
        x = x + y * self.beta
        y = self.conv4(_gate(self.conv3(self.norm2(x))))
        return x + y * self.gamma


class CompactRestorer(nn.Module):
    """Aligned face crops (B, 3, H, W) in [-1, 1] → restored crops, same shape (not clamped).

    Any size works: sides are edge-padded to a multiple of ``config.multiple`` (32 by default) and cropped back.
    """

    _repeated_blocks = ("NAFBlock",)

    def __init__(self, config: CompactRestorerConfig | None = None):
        super().__init__()
        self.config = cfg = config or CompactRestorerConfig()
        u, w = cfg.unshuffle, cfg.width
        self.intro = nn.Conv2d(cfg.image_channels * u * u, w, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        c = w
        for n in cfg.enc_blocks:
            self.encoders.append(nn.Sequential(*(NAFBlock(c, cfg.expand) for _ in range(n))))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*(NAFBlock(c, cfg.expand) for _ in range(cfg.middle_blocks)))
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in cfg.dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(c, cfg.expand) for _ in range(n))))
        self.to_full = nn.Conv2d(w, cfg.tail_channels * u * u, 1)
        self.tail = nn.Conv2d(cfg.tail_channels, cfg.image_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.image_channels:
            raise InputError(f"the compact restorer takes (B, {cfg.image_channels}, H, W) images; got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = cfg.multiple
        ph, pw = -h % m, -w % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        f = self.intro(F.pixel_unshuffle(xp, cfg.unshuffle))
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            f = enc(f)
            skips.append(f)
            f = down(f)
        f = self.middle(f)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            f = dec(up(f) + skip)
        r = self.tail(F.pixel_shuffle(self.to_full(f), cfg.unshuffle))
        return (xp + r)[..., :h, :w]


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> CompactRestorerConfig:
    """Infer the sizes of a compact restorer from its state dict."""
    try:
        intro = sd["intro.weight"]
        tail = sd["tail.weight"]
        to_full = sd["to_full.weight"]
    except KeyError as e:
        raise InputError(f"not a compact-restorer state dict: {e} is missing") from None

    def count(prefix: str) -> int:
        idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix) and k.endswith(".norm1.weight")}
        return max(idx) + 1 if idx else 0

    levels = len({k.split(".")[1] for k in sd if k.startswith("downs.")})
    width = int(intro.shape[0])
    image_channels = int(tail.shape[0])
    u = round((intro.shape[1] / image_channels) ** 0.5)
    block = next((k for k in sd if k.endswith(".conv1.weight")), None)
    expand = int(sd[block].shape[0] // sd[block].shape[1]) if block else 2
    return CompactRestorerConfig(
        image_channels=image_channels, unshuffle=u, width=width,
        enc_blocks=tuple(count(f"encoders.{i}.") for i in range(levels)),
        middle_blocks=count("middle."),
        dec_blocks=tuple(count(f"decoders.{i}.") for i in range(levels)),
        expand=expand, tail_channels=int(to_full.shape[0] // (u * u)),
    )

"""VSPBFR's StyleGAN2 discriminator (stage-3 adversarial training), with the released key names.

The topology is rosinality's StyleGAN2 discriminator (1×1 input conv, residual blocks down to 4×4, minibatch
standard deviation over groups of 4, 3×3 conv, two equalised linear layers), but VSPBFR names its modules
``encoder_input_convs``/``encoder_convs`` instead of rosinality's ``convs``, so it is its own class here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..errors import InputError, WeightsError
from .stylegan2 import BLUR_KERNEL, ConvLayer, EqualLinear, ResBlock, infer_channel_table, stylegan_channels

__all__ = ["DiscriminatorConfig", "Discriminator", "config_from_state_dict"]


@dataclass
class DiscriminatorConfig:
    """Sizes of the discriminator; the defaults build the released 512 px model (28,982,849 parameters)."""

    size: int = 512
    channel_multiplier: int = 2
    in_channels: int = 3
    blur_kernel: tuple[float, ...] = BLUR_KERNEL
    channel_max: int | None = None  # cap on the channel table (tiny test models only)
    stddev_group: int = 4

    def __post_init__(self) -> None:
        self.blur_kernel = tuple(self.blur_kernel)
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"discriminator size must be a power of two ≥ 8, got {self.size}")

    def channels(self, resolution: int) -> int:
        return stylegan_channels(resolution, self.channel_multiplier, self.channel_max)


class Discriminator(nn.Module):
    """Image (B, 3, size, size) in [-1, 1] → realness logit (B, 1)."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = cfg = config or DiscriminatorConfig()
        log_size = int(math.log2(cfg.size))
        in_channel = cfg.channels(cfg.size)
        self.encoder_input_convs = ConvLayer(cfg.in_channels, in_channel, 1)
        self.encoder_convs = nn.ModuleList()
        for i in range(log_size, 2, -1):
            out_channel = cfg.channels(2 ** (i - 1))
            self.encoder_convs.append(ResBlock(in_channel, out_channel, cfg.blur_kernel))
            in_channel = out_channel
        c4 = cfg.channels(4)
        self.final_conv = ConvLayer(in_channel + 1, c4, 3)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 16, c4, activation=True), EqualLinear(c4, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if images.ndim != 4 or images.shape[1:] != (cfg.in_channels, cfg.size, cfg.size):
            raise InputError(f"the discriminator takes (batch, {cfg.in_channels}, {cfg.size}, {cfg.size}) images, "
                             f"got {tuple(images.shape)}")
        batch = images.shape[0]
        group = min(batch, cfg.stddev_group)
        if batch % group:
            raise InputError(f"the minibatch-stddev layer needs a batch divisible by {group}, got {batch}")
        out = self.encoder_input_convs(images)
        for block in self.encoder_convs:
            out = block(out)
        _, c, h, w = out.shape
        stddev = out.reshape(group, -1, 1, c, h, w)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        out = torch.cat([out, stddev.repeat(group, 1, h, w)], 1)
        out = self.final_conv(out)
        return self.final_linear(out.reshape(batch, -1))


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> DiscriminatorConfig:
    """The configuration with exactly the shapes in ``sd``."""
    try:
        n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("encoder_convs."))
        size = 2 ** (n_blocks + 2)
        w_in = sd["encoder_input_convs.0.weight"]
        found = {size: w_in.shape[0]}
        for j in range(n_blocks):
            found[size // 2 ** (j + 1)] = sd[f"encoder_convs.{j}.conv2.1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not a VSPBFR discriminator state dict ({e!r})") from None
    cm, cmax = infer_channel_table(found)
    return DiscriminatorConfig(size=size, channel_multiplier=cm, in_channels=w_in.shape[1], channel_max=cmax)

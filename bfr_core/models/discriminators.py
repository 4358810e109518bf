"""PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator`` layout) for PLTrans' two GAN stages.

The paper uses "a generic discriminator"; RestoreFormer, whose dictionary recipe we follow, trains both its
stages against this PatchGAN (ndf 64, 3 layers, BatchNorm), so PLTrans uses it too. Input (B, 3, H, W)
in [-1, 1] → a map of realness logits (B, 1, H/8 − 2, W/8 − 2) for the default 3 layers, each covering a
70×70 patch. Module names (``main.{i}``) follow taming's, so its weights load unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..errors import InputError, WeightsError

__all__ = ["PatchDiscriminatorConfig", "PatchDiscriminator", "config_from_state_dict"]


@dataclass
class PatchDiscriminatorConfig:
    """Sizes of the PatchGAN; the defaults are taming's / RestoreFormer's (2,765,633 parameters)."""

    in_channels: int = 3
    ndf: int = 64
    n_layers: int = 3


class PatchDiscriminator(nn.Module):
    """4×4 convs: stride 2 ×n_layers (widths ×2 up to ×8, BatchNorm from the second), one stride-1, then a logit."""

    def __init__(self, config: PatchDiscriminatorConfig | None = None):
        super().__init__()
        self.config = cfg = config or PatchDiscriminatorConfig()
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, cfg.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [nn.Conv2d(cfg.ndf * prev, cfg.ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(cfg.ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(cfg.ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm scales N(1, 0.02), shifts 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) with H, W ≥ 32 → logits (B, 1, h, w)."""
        if images.ndim != 4 or images.shape[1] != self.config.in_channels or min(images.shape[-2:]) < 32:
            raise InputError(f"the PatchGAN takes (batch, {self.config.in_channels}, H, W) images with H, W ≥ 32; "
                             f"got {tuple(images.shape)}")
        return self.main(images)


_CONV = re.compile(r"^main\.(\d+)\.weight$")


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> PatchDiscriminatorConfig:
    """The configuration with the shapes in ``sd``."""
    try:
        first = sd["main.0.weight"]
        convs = sorted(int(m.group(1)) for k, v in sd.items() if (m := _CONV.match(k)) and v.ndim == 4)
    except KeyError as e:
        raise WeightsError(f"not a PatchGAN discriminator state dict ({e!r})") from None
    return PatchDiscriminatorConfig(in_channels=int(first.shape[1]), ndf=int(first.shape[0]), n_layers=len(convs) - 2)

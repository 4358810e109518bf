"""PGDiff's time-conditioned RRDB restorer: predicts the "smooth semantics" target from a noisy sample.

It sees the current noisy sample x_t, the low-quality image y and a 3-channel map of the timestep (a
100-d sinusoid through a tiny MLP, broadcast over the image), pixel-unshuffled ×4 so that the 23 RRDB
blocks run at a quarter of the resolution, then upsampled twice back to the input size. The timestep
is always on the original 0…999 scale, also when the sampler skips steps. Parameter names follow the
released ``rrdb_iter_100000.pth`` (``state_dict`` → ``generator.*``, ``time_embed.*``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .adm_unet import timestep_embedding

__all__ = ["RRDBRestorerConfig", "RRDBRestorer", "config_from_state_dict"]


@dataclass
class RRDBRestorerConfig:
    """Sizes of the restorer; the defaults build the released one (16,779,518 parameters)."""

    image_channels: int = 3  # x_t, y and the time map each have this many channels
    mid_channels: int = 64
    num_blocks: int = 23
    growth_channels: int = 32
    time_sinusoid_dim: int = 100


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs with a 0.2-scaled residual (ESRGAN)."""

    def __init__(self, mid: int, growth: int):
        super().__init__()
        for i in range(5):
            self.add_module(f"conv{i + 1}", nn.Conv2d(mid + i * growth, mid if i == 4 else growth, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Three residual dense blocks inside one more 0.2-scaled residual."""

    def __init__(self, mid: int, growth: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(mid, growth)
        self.rdb2 = ResidualDenseBlock(mid, growth)
        self.rdb3 = ResidualDenseBlock(mid, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """Pixel-unshuffle ×4 → conv → RRDB trunk (+ long skip) → two nearest ×2 upsamplings → image."""

    def __init__(self, in_channels: int, out_channels: int, mid: int, num_blocks: int, growth: int):
        super().__init__()
        self.conv_first = nn.Conv2d(in_channels * 16, mid, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(mid, growth) for _ in range(num_blocks)))
        self.conv_body = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_hr = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_last = nn.Conv2d(mid, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(F.pixel_unshuffle(x, 4))
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class RRDBRestorer(nn.Module):
    """``forward(x_t, y, t) -> restored`` (B, 3, H, W) in [-1, 1]; H and W divisible by 4.

    ``t`` is a (B,) tensor of original-scale timesteps. ``clamp=False`` returns the raw output.
    """

    _repeated_blocks = ("RRDB",)

    def __init__(self, config: RRDBRestorerConfig | None = None):
        super().__init__()
        cfg = self.config = config or RRDBRestorerConfig()
        c = cfg.image_channels
        self.generator = RRDBNet(3 * c, c, cfg.mid_channels, cfg.num_blocks, cfg.growth_channels)
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_sinusoid_dim, c), nn.SiLU(), nn.Linear(c, c))

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        dtype = self.generator.conv_first.weight.dtype
        if x_t.shape[-1] % 4 or x_t.shape[-2] % 4:
            raise InputError(f"the restorer needs H and W divisible by 4, got {tuple(x_t.shape[-2:])}; resize the face first.")
        temb = self.time_embed(timestep_embedding(t, self.config.time_sinusoid_dim).to(dtype))
        tmap = temb[:, :, None, None].expand(-1, -1, *x_t.shape[-2:])
        out = self.generator(torch.cat([x_t.to(dtype), y.to(dtype).expand_as(x_t), tmap], dim=1))
        return out.clamp(-1.0, 1.0) if clamp else out


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> RRDBRestorerConfig:
    """Infer an :class:`RRDBRestorerConfig` from a state dict with ``generator.*`` / ``time_embed.*`` keys."""
    first = sd["generator.conv_first.weight"]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^generator\.body\.(\d+)\.", k))}
    return RRDBRestorerConfig(
        image_channels=int(first.shape[1]) // 48,
        mid_channels=int(first.shape[0]),
        num_blocks=len(blocks),
        growth_channels=int(sd["generator.body.0.rdb1.conv1.weight"].shape[0]),
        time_sinusoid_dim=int(sd["time_embed.0.weight"].shape[1]),
    )

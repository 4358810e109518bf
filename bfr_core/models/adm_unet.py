"""The ADM / iDDPM UNet (guided-diffusion family) in DifFace's FFHQ-512 configuration: PGDiff's face prior.

The network predicts ε and, in three more channels, the interpolation value v ∈ [-1, 1] of the
learned-range variance (see :mod:`bfr_core.sampling.schedule`). Parameter and buffer names follow the
released ``iddpm_ffhq512_ema500000.pth`` (after stripping its ``module.`` prefix), so that file loads
with ``strict=True``.

Two details differ from guided-diffusion's stock ``create_model`` and decide whether the checkpoint
fits at all: ``num_res_blocks`` is a list with one entry per level, and ``attention_resolutions`` are
feature-map sizes (32, 16, 8 px for a 512 px input), not downsampling factors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

__all__ = ["ADMUNetConfig", "ADMUNet", "config_from_state_dict", "timestep_embedding"]


@dataclass
class ADMUNetConfig:
    """Sizes of the UNet; the defaults build DifFace's FFHQ-512 model (159,788,454 parameters)."""

    image_size: int = 512
    in_channels: int = 3
    model_channels: int = 32
    out_channels: int = 6  # ε (3) and the learned-range variance interpolation v (3)
    num_res_blocks: tuple[int, ...] = (1, 2, 2, 2, 2, 3, 4)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes at image_size input
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8, 16, 16)
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    norm_groups: int = 32
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ValueError("num_res_blocks needs one entry per channel_mult level")

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """Levels (0 = full resolution) that carry attention."""
        return tuple(lv for lv in range(len(self.channel_mult)) if self.image_size // 2**lv in self.attention_resolutions)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [cos | sin] order, float32 (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the activation dtype (as the released model was trained)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class ResBlock(nn.Module):
    """GN–SiLU–conv, timestep FiLM (scale-shift) or additive, GN–SiLU–dropout–conv, 1×1 skip on channel change."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, cfg: ADMUNetConfig):
        super().__init__()
        self.use_scale_shift_norm = cfg.use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(cfg.norm_groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if cfg.use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(cfg.norm_groups, out_channels), nn.SiLU(), nn.Dropout(cfg.dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with the legacy QKV channel order ([q, k, v] contiguous per head)."""

    def __init__(self, channels: int, head_channels: int, norm_groups: int):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels do not split into heads of {head_channels}")
        self.num_heads = channels // head_channels
        self.norm = GroupNorm32(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, hh * ww)
        qkv = self.qkv(self.norm(flat)).reshape(b, self.num_heads, 3, c // self.num_heads, hh * ww)
        q, k, v = (qkv[:, :, i].transpose(-1, -2) for i in range(3))  # (B, heads, L, ch)
        # SDPA computes softmax(q·kᵀ/√ch)·v like the reference einsum, with fused kernels on GPU.
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, hh * ww)
        return (flat + self.proj_out(a)).reshape(b, c, hh, ww)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A stage whose residual blocks also receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """ε / learned-variance UNet: ``forward(x (B,C,H,W), t (B,) original-scale timesteps) -> (B, out, H, W)``.

    H and W must be divisible by 2^(levels-1) (64 for the full model). Attention sits at the same levels
    whatever the input size, so the model also runs on smaller crops (it was trained at 512).
    """

    _repeated_blocks = ("ResBlock", "AttentionBlock")

    def __init__(self, config: ADMUNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or ADMUNetConfig()
        emb_dim = 4 * cfg.model_channels
        attn = set(cfg.attention_levels)
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = cfg.channel_mult[0] * cfg.model_channels
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * cfg.model_channels, cfg)]
                ch = mult * cfg.model_channels
                if level in attn:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, cfg.norm_groups))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_chans.append(ch)

        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_dim, ch, cfg), AttentionBlock(ch, cfg.num_head_channels, cfg.norm_groups), ResBlock(ch, emb_dim, ch, cfg)
        )

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            mult = cfg.channel_mult[level]
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_dim, mult * cfg.model_channels, cfg)]
                ch = mult * cfg.model_channels
                if level in attn:
                    layers.append(AttentionBlock(ch, cfg.num_head_channels, cfg.norm_groups))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(cfg.norm_groups, ch), nn.SiLU(),
            nn.Conv2d(cfg.channel_mult[0] * cfg.model_channels, cfg.out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = self.out[2].weight.dtype
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


_INPUT_KEY = re.compile(r"^input_blocks\.(\d+)(\..*)$")


def config_from_state_dict(sd: Mapping[str, torch.Tensor], **overrides) -> ADMUNetConfig:
    """Infer an :class:`ADMUNetConfig` from a (prefix-free) state dict's keys and shapes.

    ``image_size`` (512) and ``num_head_channels`` (64) cannot be read from weights; pass them in
    ``overrides`` for other models. Attention placement is read per level and expressed as
    feature-map sizes at ``image_size``.
    """
    image_size = int(overrides.pop("image_size", 512))
    first = sd["input_blocks.0.0.weight"]
    model_channels0, in_channels = int(first.shape[0]), int(first.shape[1])
    blocks: dict[int, set[str]] = {}
    for key in sd:
        m = _INPUT_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    res_counts: list[int] = [0]
    out_mults: list[int] = []
    attn_levels: list[int] = []
    for idx in sorted(blocks)[1:]:
        keys = blocks[idx]
        if any(k.startswith(".0.op.") for k in keys):  # downsample closes a level
            res_counts.append(0)
            continue
        res_counts[-1] += 1
        out_ch = int(sd[f"input_blocks.{idx}.0.in_layers.2.weight"].shape[0])
        level = len(res_counts) - 1
        if len(out_mults) <= level:
            out_mults.append(out_ch)
        if any(k.startswith(".1.qkv.") for k in keys) and level not in attn_levels:
            attn_levels.append(level)
    base = int(sd["time_embed.0.weight"].shape[1])
    emb_out = int(sd["input_blocks.1.0.emb_layers.1.weight"].shape[0])
    out0 = int(sd["input_blocks.1.0.in_layers.2.weight"].shape[0])
    cfg = dict(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=base,
        out_channels=int(sd["out.2.weight"].shape[0]),
        num_res_blocks=tuple(res_counts),
        attention_resolutions=tuple(image_size // 2**lv for lv in attn_levels),
        channel_mult=tuple(c // base for c in out_mults),
        use_scale_shift_norm=emb_out == 2 * out0,
    )
    if model_channels0 != cfg["channel_mult"][0] * base:
        raise WeightsError("input_blocks.0 does not match the first level's width: this is not an ADM UNet checkpoint.")
    cfg.update(overrides)
    return ADMUNetConfig(**cfg)

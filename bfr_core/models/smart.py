"""VSPBFR's restoration network: a style-modulated auto-encoder built from SMART layers, as released.

Inputs per face: the degraded image y (B, 3, 512, 512), the diffused W+ codes (only the first 16 of the 18 rows
are used), the StyleGAN2 feature bank (taps at 8 … 512 px) and random styles from the network's own mapping
network (``style.*``; two z's mixed at a random crossover with probability 0.5, as released).

Per-layer styles are s_l = [w_l ; m_l] (1024-d). The encoder reads them in **reverse** order (the level at 512 px
uses row 15, then 13, …, 3); the decoder appends the global code g (1024-d) to each: 2048-d styles.

* Encoder: ``down_from_big`` (four 1×1 convs → concat → 1×1 conv + lrelu → lrelu), then per level from 512 to 8 px
  a SMART layer (kept as the skip feature) and a StyledConv that halves the resolution (blur + stride-2 modulated
  conv); ``final_layer`` (four dilated 3×3 convs) at 4×4; g = EqualLinear(8192 → 1024, lrelu) + dropout;
  the 4×4 map gets EqualLinear(1024 → 8192, lrelu)(g) added.
* Decoder (StyleGAN2 synthesis topology): SMART at 4×4, then per level an upsampling StyledConv, plus the encoder
  skip and the StyleGAN2 tap of the same size (plain sums), then a SMART layer; RGB through ``to_rgb`` skips.
* SMART layer: one shared modulation; four demodulated 3×3 convs with dilation 1, 2, 4, 8 and a quarter of the
  output channels each; concat → 3×3 conv + lrelu (``fusion``) → noise → lrelu (``activate``).

Noise: the official code draws fresh noise in every injection (its ``randomize_noise=False`` path crashes, as the
encoder reuses the decoder's noise list in reverse). Here each injection's noise can be passed by module path
(``{"encoder_convs.0.noise": tensor, "conv1.noise": …}``) or is drawn from a ``torch.Generator`` in execution order
(encoder, then decoder). The ``noises.noise_*`` buffers exist only so that official state dicts load strictly.

The global-code dropout is the official ``Dropout2d(0.5)`` applied to a (B, 1024) tensor, which PyTorch treats as
element-wise dropout; it is an ``nn.Dropout`` here (no parameters, so the keys are unchanged) and does nothing in
``eval()`` mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from .stylegan2 import (
    BLUR_KERNEL, ConvLayer, EqualConv2d, EqualLinear, FusedLeakyReLU, NoiseInjection, PixelNorm, StyledConv, ToRGB,
    demodulation, flat_noise, infer_channel_table, stylegan_channels,
)

__all__ = ["RestorationNetConfig", "RestorationNet", "SMARTLayer", "config_from_state_dict"]


@dataclass
class RestorationNetConfig:
    """Sizes of the network; the defaults build the released 512 px model (112,550,773 parameters)."""

    size: int = 512
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    blur_kernel: tuple[float, ...] = BLUR_KERNEL
    lr_mlp: float = 0.01
    channel_max: int | None = None  # cap on the channel table (tiny test models only)
    rates: tuple[int, ...] = (1, 2, 4, 8)  # dilations of the SMART and large-kernel branches
    global_dropout: float = 0.5

    def __post_init__(self) -> None:
        self.blur_kernel, self.rates = tuple(self.blur_kernel), tuple(self.rates)
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"restoration size must be a power of two ≥ 8, got {self.size}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """W+ rows used (16 at 512 px)."""
        return 2 * self.log_size - 2

    @property
    def num_layers(self) -> int:
        return 2 * (self.log_size - 2) + 1

    def channels(self, resolution: int) -> int:
        return stylegan_channels(resolution, self.channel_multiplier, self.channel_max)


class DilatedModulatedConv2d(nn.Module):
    """One SMART branch: only the weight (the modulation is shared); :class:`SMARTLayer` runs the branches."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, dilation: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.dilation = dilation
        self.padding = ((kernel_size - 1) * dilation) // 2

    def scaled_weight(self) -> torch.Tensor:
        return self.scale * self.weight[0]


class SMARTLayer(nn.Module):
    """Shared modulation → four dilated demodulated convs (out/4 channels each) → fusion conv → noise → lrelu.

    The branches share the modulated input and are demodulated after the concatenation, one pass each.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 rates: Sequence[int] = (1, 2, 4, 8), blur_kernel: Sequence[float] = BLUR_KERNEL):
        super().__init__()
        self.ModulatedConv2ds = nn.ModuleList(
            DilatedModulatedConv2d(in_channel, out_channel // len(rates), kernel_size, r) for r in rates)
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.fusion = ConvLayer(out_channel, out_channel, 3, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)
        xs = x * s.reshape(x.shape[0], -1, 1, 1).to(x.dtype)
        weights = [conv.scaled_weight() for conv in self.ModulatedConv2ds]
        out = torch.cat([F.conv2d(xs, w.to(xs.dtype), padding=conv.padding, dilation=conv.dilation)
                         for w, conv in zip(weights, self.ModulatedConv2ds)], dim=1)
        demod = torch.cat([demodulation(w, s) for w in weights], dim=1)
        out = out * demod.reshape(x.shape[0], -1, 1, 1).to(out.dtype)
        return self.activate(self.noise(self.fusion(out), noise))


class LargeConvLayer(nn.Module):
    """Four dilated EqualConv2d branches (out/4 channels each) → concat → 1×1 ConvLayer → FusedLeakyReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, rates: Sequence[int] = (1, 2, 4, 8)):
        super().__init__()
        self.dilated_convs = nn.ModuleList(
            EqualConv2d(in_channel, out_channel // len(rates), kernel_size, padding=((kernel_size - 1) * r) // 2,
                        bias=False, dilation=r) for r in rates)
        self.fusion = ConvLayer(out_channel, out_channel, 1)
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.fusion(torch.cat([conv(x) for conv in self.dilated_convs], dim=1)))


NoiseArg = Mapping[str, torch.Tensor]


class RestorationNet(nn.Module):
    """The released ``Restoration_net`` (generator of stage 3); see the module docstring."""

    def __init__(self, config: RestorationNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or RestorationNetConfig()
        self.size, self.style_dim, self.n_latent = cfg.size, cfg.style_dim, cfg.n_latent
        c4 = cfg.channels(4)
        enc_style = 2 * cfg.style_dim
        dec_style = enc_style + 2 * c4  # [w ; m ; g]
        bk = cfg.blur_kernel

        self.conv1 = SMARTLayer(c4, c4, 3, dec_style, cfg.rates, bk)
        self.to_rgb1 = ToRGB(c4, dec_style, upsample=False, blur_kernel=bk)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp, activation=True) for _ in range(cfg.n_mlp)])
        for idx in range(cfg.num_layers):
            res = 2 ** ((idx + 5) // 2)
            self.noises.register_buffer(f"noise_{idx}", torch.randn(1, 1, res, res))
        in_channel = c4
        for i in range(3, cfg.log_size + 1):
            out_channel = cfg.channels(2 ** i)
            self.convs.append(StyledConv(in_channel, out_channel, 3, dec_style, upsample=True, blur_kernel=bk))
            self.convs.append(SMARTLayer(out_channel, out_channel, 3, dec_style, cfg.rates, bk))
            self.to_rgbs.append(ToRGB(out_channel, dec_style, blur_kernel=bk))
            in_channel = out_channel

        self.down_from_big = LargeConvLayer(3, cfg.channels(cfg.size), 1, cfg.rates)
        self.encoder_convs = nn.ModuleList()
        in_channel = cfg.channels(cfg.size)
        for i in range(cfg.log_size, 2, -1):
            tmp_channel, out_channel = cfg.channels(2 ** i), cfg.channels(2 ** (i - 1))
            self.encoder_convs.append(SMARTLayer(in_channel, tmp_channel, 3, enc_style, cfg.rates, bk))
            self.encoder_convs.append(StyledConv(tmp_channel, out_channel, 3, enc_style, downsample=True,
                                                 blur_kernel=bk))
            in_channel = out_channel
        self.final_layer = LargeConvLayer(in_channel, c4, 3, cfg.rates)
        self.final_linear = nn.Sequential(EqualLinear(c4 * 16, c4 * 2, activation=True),
                                          nn.Dropout(cfg.global_dropout))
        self.final_transfer = EqualLinear(c4 * 2, c4 * 16, activation=True)

    # -- random styles -------------------------------------------------------------------------------------------

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, style_dim) → W (B, style_dim) with this network's own mapping MLP."""
        return self.style(z)

    def styles_from_z(self, z1: torch.Tensor, z2: torch.Tensor | None = None,
                      inject_index: int | torch.Tensor | None = None) -> torch.Tensor:
        """Per-layer random styles (B, n_latent, style_dim): map(z1) for every layer, or map(z1) for layers
        < ``inject_index`` and map(z2) from there on (style mixing; an int or one index per sample)."""
        w1 = self.mapping(z1).unsqueeze(1).expand(-1, self.n_latent, -1)
        if z2 is None:
            return w1
        if inject_index is None:
            raise InputError("style mixing needs an inject_index (the first layer that uses the second style)")
        w2 = self.mapping(z2).unsqueeze(1).expand(-1, self.n_latent, -1)
        idx = torch.as_tensor(inject_index, device=z1.device).reshape(-1, 1, 1)
        layer = torch.arange(self.n_latent, device=z1.device).reshape(1, -1, 1)
        return torch.where(layer < idx, w1, w2)

    def sample_mixing(self, batch: int, generator: torch.Generator | None = None, mixing_prob: float = 0.5,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw (z1, z2, inject_index) as released: two z ~ N(0, I); with probability ``mixing_prob`` the layers
        from a crossover uniform in [1, n_latent − 1] use z2, otherwise none do (index = n_latent).

        The decision and crossover are per sample (the official code draws one per batch, with Python's
        ``random``; both agree at batch 1). The draws (u, z, index, in that order) do not depend on ``mixing_prob``.
        """
        device = torch.device(device) if device is not None else self.style[1].weight.device
        gdev = generator.device if generator is not None else device
        u = torch.rand(batch, generator=generator, device=gdev)
        z = torch.randn(2, batch, self.style_dim, generator=generator, device=gdev)
        idx = torch.randint(1, self.n_latent, (batch,), generator=generator, device=gdev)
        idx = torch.where(u < mixing_prob, idx, torch.full_like(idx, self.n_latent))
        return z[0].to(device), z[1].to(device), idx.to(device)

    def random_styles(self, batch: int, generator: torch.Generator | None = None, mixing_prob: float = 0.5,
                      device: torch.device | str | None = None) -> torch.Tensor:
        """Random per-layer styles (B, n_latent, style_dim): :meth:`sample_mixing` then :meth:`styles_from_z`."""
        return self.styles_from_z(*self.sample_mixing(batch, generator, mixing_prob, device))

    # -- noise ---------------------------------------------------------------------------------------------------

    def noise_layers(self) -> list[tuple[str, int]]:
        """(module path, resolution) of every noise injection, in execution order (encoder, then decoder)."""
        out = []
        for j in range(len(self.encoder_convs) // 2):
            res = self.size // 2 ** j
            out += [(f"encoder_convs.{2 * j}.noise", res), (f"encoder_convs.{2 * j + 1}.noise", res // 2)]
        out.append(("conv1.noise", 4))
        for k in range(len(self.convs) // 2):
            out += [(f"convs.{2 * k}.noise", 8 * 2 ** k), (f"convs.{2 * k + 1}.noise", 8 * 2 ** k)]
        return out

    def make_noise(self, batch: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                   ) -> dict[str, torch.Tensor]:
        """A noise map (B, 1, r, r) per injection, cut in execution order from one draw of ``generator``."""
        like = torch.empty(0, device=device or self.style[1].weight.device, dtype=dtype)
        layers = self.noise_layers()
        maps = flat_noise(batch, [r for _, r in layers], like, generator)
        return {name: m for (name, _), m in zip(layers, maps)}

    # -- forward -------------------------------------------------------------------------------------------------

    def _check(self, images: torch.Tensor, bank: Sequence[torch.Tensor], codes: torch.Tensor,
               styles: torch.Tensor) -> None:
        cfg, b = self.config, images.shape[0]
        if images.ndim != 4 or images.shape[1:] != (3, cfg.size, cfg.size):
            raise InputError(f"the restorer takes aligned faces (batch, 3, {cfg.size}, {cfg.size}) in [-1, 1], "
                             f"got {tuple(images.shape)}")
        if codes.ndim != 3 or codes.shape[0] != b or codes.shape[1] < cfg.n_latent or codes.shape[2] != cfg.style_dim:
            raise InputError(f"codes must be (batch={b}, ≥{cfg.n_latent}, {cfg.style_dim}), got {tuple(codes.shape)}")
        if styles.shape != (b, cfg.n_latent, cfg.style_dim):
            raise InputError(f"styles must be ({b}, {cfg.n_latent}, {cfg.style_dim}), got {tuple(styles.shape)}")
        if len(bank) < cfg.log_size - 1:
            raise InputError(f"the feature bank needs maps at 4 … {cfg.size} px ({cfg.log_size - 1} entries), "
                             f"got {len(bank)}")
        for k in range(1, cfg.log_size - 1):
            want = (b, cfg.channels(4 * 2 ** k), 4 * 2 ** k, 4 * 2 ** k)
            if tuple(bank[k].shape) != want:
                raise InputError(f"feature bank entry {k} must be {want}, got {tuple(bank[k].shape)}; "
                                 "the bank must come from the StyleGAN2 generator that matches this restorer")

    def forward(self, images: torch.Tensor, bank: Sequence[torch.Tensor], codes: torch.Tensor, styles: torch.Tensor,
                *, noise: NoiseArg | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Restore ``images`` (B, 3, size, size) in [-1, 1] → (B, 3, size, size).

        ``bank``: StyleGAN2 taps at 4, 8, …, ≥ size px (entry k at 4·2^k px; entries 1 … log2(size) − 2 are used);
        ``codes``: diffused W+ (B, ≥ n_latent, style_dim); ``styles``: random per-layer styles (B, n_latent,
        style_dim) from :meth:`random_styles` or :meth:`styles_from_z`; ``noise``: per-injection noise by module
        path (all of them), or drawn by :meth:`make_noise` from ``generator``.
        """
        self._check(images, bank, codes, styles)
        if noise is None:
            noise = self.make_noise(images.shape[0], generator, device=images.device)
        missing = [name for name, _ in self.noise_layers() if name not in noise]
        if missing:
            raise InputError(f"noise is missing for {', '.join(missing)} (see RestorationNet.noise_layers)")
        nz = noise.__getitem__
        n = self.n_latent
        latent = torch.cat([codes[:, :n].to(styles.dtype), styles], dim=-1)

        # Encoder: the style rows in reverse order, one per level.
        out = self.down_from_big(images)
        skips = []
        for j in range(len(self.encoder_convs) // 2):
            s = latent[:, n - 1 - 2 * j]
            out = self.encoder_convs[2 * j](out, s, nz(f"encoder_convs.{2 * j}.noise"))
            skips.append(out)
            out = self.encoder_convs[2 * j + 1](out, s, nz(f"encoder_convs.{2 * j + 1}.noise"))
        out = self.final_layer(out)
        g = self.final_linear(out.reshape(out.shape[0], -1))
        out = out + self.final_transfer(g).reshape(out.shape)
        skips.reverse()  # 8 px first

        def style(i: int) -> torch.Tensor:
            return torch.cat([latent[:, i], g.to(latent.dtype)], dim=1)

        # Decoder.
        out = self.conv1(out, style(0), nz("conv1.noise"))
        skip = self.to_rgb1(out, style(1))
        i = 1
        for k in range(len(self.convs) // 2):
            out = self.convs[2 * k](out, style(i), nz(f"convs.{2 * k}.noise"))
            out = out + skips[k] + bank[k + 1].to(out.dtype)
            out = self.convs[2 * k + 1](out, style(i + 1), nz(f"convs.{2 * k + 1}.noise"))
            skip = self.to_rgbs[k](out, style(i + 2), skip)
            i += 2
        return skip


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> RestorationNetConfig:
    """The configuration with exactly the shapes in ``sd`` (``lr_mlp`` and the dropout cannot be read)."""
    try:
        n_levels = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("to_rgbs."))
        found = {4: sd["conv1.fusion.0.weight"].shape[0]}
        for k in range(n_levels):
            found[2 ** (k + 3)] = sd[f"convs.{2 * k}.conv.weight"].shape[1]
        style_dim = sd["style.1.weight"].shape[0]
        n_mlp = max(int(k.split(".")[1]) for k in sd if k.startswith("style."))
        n_rates = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("conv1.ModulatedConv2ds."))
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not a VSPBFR restoration-net state dict ({e!r})") from None
    if n_rates != 4:
        raise WeightsError(f"SMART layers have four dilated branches (1, 2, 4, 8); this state dict has {n_rates}")
    cm, cmax = infer_channel_table(found)
    return RestorationNetConfig(size=2 ** (n_levels + 2), style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=cm,
                                channel_max=cmax)

"""StyleGAN2 building blocks and generator, compatible with rosinality's ``stylegan2-pytorch`` checkpoints.

Pure PyTorch: rosinality compiles CUDA kernels for the bias + leaky-ReLU and for ``upfirdn2d``; here both are
written with ordinary torch ops, while the parameter and buffer names stay the same (``activate.bias``,
``blur.kernel``, ``upsample.kernel``, ``noises.noise_*``) so released state dicts load with ``strict=True``.

VSPBFR uses the e4e checkpoint's 1024 px generator as a *feature bank*: the output of the first (upsampling)
convolution of every resolution, plus the 4×4 ``conv1`` output. :meth:`Generator.forward` returns those taps and
stops after the highest resolution asked for; the remaining convolutions and all ``to_rgb`` layers only run when
the image is requested (the preview).

Modulated convolutions scale the activations by the style and the output by the demodulation coefficients,
around one convolution with the shared weight (StyleGAN2-ADA's non-fused path). This is the same function as
rosinality's per-sample grouped convolution with modulated weights, up to float rounding, and it avoids building
a weight tensor per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError

__all__ = [
    "GeneratorConfig", "Generator", "SynthesisOutput", "config_from_state_dict", "stylegan_channels",
    "infer_channel_table",
    "make_kernel", "upfirdn2d", "fused_leaky_relu", "modulated_conv2d", "demodulation", "draw_noise", "flat_noise",
    "PixelNorm", "EqualLinear", "EqualConv2d", "FusedLeakyReLU", "Blur", "Upsample", "ModulatedConv2d",
    "NoiseInjection", "StyledConv", "ToRGB", "ConstantInput", "ConvLayer", "ResBlock", "ScaledLeakyReLU",
]

#: Default FIR filter of StyleGAN2's up/down-sampling.
BLUR_KERNEL = (1, 3, 3, 1)


def stylegan_channels(resolution: int, channel_multiplier: int = 2, channel_max: int | None = None) -> int:
    """Feature channels at ``resolution`` in rosinality's table (config-f for ``channel_multiplier=2``).

    ``channel_max`` caps every entry; it is ``None`` for the released models and small in test configurations.
    """
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    if resolution not in table:
        raise ValueError(f"StyleGAN2 resolutions are powers of two from 4 to 1024, got {resolution}")
    return table[resolution] if channel_max is None else min(channel_max, table[resolution])


# ----------------------------------------------------------------------------------------------------------------
# Functional ops


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """A normalised 2-D FIR kernel from a 1-D one (outer product), as a float32 tensor."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, apply the FIR ``kernel`` per channel, keep every ``down``-th pixel.

    Same result as rosinality's ``upfirdn2d`` (whose CUDA kernel this replaces) for square up/down factors and a
    symmetric ``pad = (before, after)``, applied to both axes. Negative pads crop.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).reshape(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = 2 ** 0.5) -> torch.Tensor:
    """``leaky_relu(x + bias) * scale`` with the bias broadcast over channel dim 1 (rosinality's fused op)."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    return F.leaky_relu(x, negative_slope) * scale


def draw_noise(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise with ``like``'s device and dtype, drawn from ``generator`` on its own device.

    Drawn in float32 then cast, so a seed gives the same numbers whatever the compute precision.
    """
    dev = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


def flat_noise(batch: int, resolutions: Sequence[int], like: torch.Tensor,
               generator: torch.Generator | None) -> list[torch.Tensor]:
    """Noise maps (B, 1, r, r) for the given resolutions, cut from one (B, Σ r²) draw (one call per batch)."""
    sizes = [r * r for r in resolutions]
    if not sizes:
        return []
    flat = draw_noise((batch, sum(sizes)), like, generator)
    return [c.reshape(batch, 1, r, r) for c, r in zip(flat.split(sizes, dim=1), resolutions)]


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, style: torch.Tensor, *, demodulate: bool = True,
                     padding: int = 0, dilation: int = 1, up: bool = False, down: bool = False,
                     blur: Blur | None = None, fold_fir: bool | None = None) -> torch.Tensor:
    """StyleGAN2's modulated (and optionally demodulated) convolution.

    ``weight`` (out, in, k, k) already carries the equalised-lr scale; ``style`` (B, in) is the modulation.
    ``up`` is a stride-2 transposed convolution followed by ``blur``; ``down`` is ``blur`` followed by a stride-2
    convolution; otherwise a convolution with the given padding and dilation.

    ``fold_fir`` merges the blur into the convolution weight (one strided convolution with a (k+3)×(k+3) kernel,
    the same function up to rounding). Default: on accelerators, where PyTorch's depthwise blur is slow and the
    larger kernel runs on tensor cores; not on the CPU, where the separate blur is cheaper.
    """
    b = x.shape[0]
    x = x * style.reshape(b, -1, 1, 1).to(x.dtype)
    fold = (x.device.type != "cpu") if fold_fir is None else fold_fir
    if up and fold:
        w = _fir_full_conv(weight.transpose(0, 1), blur.kernel)
        out = F.conv_transpose2d(x, w.to(x.dtype), stride=2, padding=blur.kernel.shape[0] - 1 - blur.pad[0])
    elif down and fold:
        w = _fir_full_conv(weight, torch.flip(blur.kernel, [0, 1]))
        out = F.conv2d(x, w.to(x.dtype), stride=2, padding=blur.pad[0])
    elif up:
        out = blur(F.conv_transpose2d(x, weight.to(x.dtype).transpose(0, 1), stride=2))
    elif down:
        out = F.conv2d(blur(x), weight.to(x.dtype), stride=2)
    else:
        out = F.conv2d(x, weight.to(x.dtype), padding=padding, dilation=dilation)
    if demodulate:
        out = out * demodulation(weight, style).reshape(b, -1, 1, 1).to(out.dtype)
    return out


def _fir_full_conv(weight: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Full 2-D convolution of every k×k slice of ``weight`` (A, B, k, k) with the FIR ``kernel`` (float32).

    A stride-2 transposed conv with W then the FIR K equals one stride-2 transposed conv with W ∗ K (cropped by
    the padding); the FIR then a stride-2 conv with W equals one stride-2 conv with W ∗ flip(K).
    """
    a, b, k, _ = weight.shape
    kh = kernel.shape[0]
    w = F.conv2d(weight.float().reshape(a * b, 1, k, k), torch.flip(kernel.float(), [0, 1])[None, None], padding=kh - 1)
    return w.reshape(a, b, k + kh - 1, k + kh - 1)


def demodulation(weight: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Per-sample output scales 1/√(Σ_{i,k} (W_oik s_i)² + 1e-8), (B, out), in float32.

    Computed as Σ_i s_i² Σ_k W_oik² without building per-sample weights, with elementwise products and a sum
    (not a matmul), so autocast keeps the reduction in float32.
    """
    wsq = weight.float().pow(2).sum([2, 3])
    return torch.rsqrt((style.float().pow(2)[:, None, :] * wsq[None]).sum(2) + 1e-8)


# ----------------------------------------------------------------------------------------------------------------
# Layers (official names)


class PixelNorm(nn.Module):
    """Normalise each vector to unit RMS along dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (runtime weight scale, ``lr_mul``) and optional fused lrelu."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate (weight scaled by 1/√fan_in at run time)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, dilation: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation)


class FusedLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU (slope 0.2) and a √2 gain; the bias keeps the official name ``bias``."""

    def __init__(self, channel: int, bias: bool = True, negative_slope: float = 0.2, scale: float = 2 ** 0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class ScaledLeakyReLU(nn.Module):
    """Leaky ReLU times √2 (no bias)."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope) * math.sqrt(2)


class Blur(nn.Module):
    """FIR filter with padding; the filter is the persistent buffer ``kernel`` (stored in checkpoints)."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor ** 2)
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """×2 FIR upsampling (the RGB skip path); the filter is the buffer ``kernel``."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * (factor ** 2)
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


def _up_blur(blur_kernel: Sequence[float], kernel_size: int, dilation: int = 1) -> Blur:
    factor = 2
    p = (len(blur_kernel) - factor) - (kernel_size - 1) * dilation
    return Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)


def _down_blur(blur_kernel: Sequence[float], kernel_size: int) -> Blur:
    p = (len(blur_kernel) - 2) + (kernel_size - 1)
    return Blur(blur_kernel, pad=((p + 1) // 2, p // 2))


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with its own modulation layer (``A`` in the paper, bias initialised to 1)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, downsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.downsample, self.demodulate = upsample, downsample, demodulate
        if (upsample or downsample) and len(blur_kernel) % 2:
            raise ValueError("resampling modulated convs need an even-length FIR kernel (symmetric padding)")
        if upsample:
            self.blur = _up_blur(blur_kernel, kernel_size)
        if downsample:
            self.blur = _down_blur(blur_kernel, kernel_size)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return modulated_conv2d(
            x, self.scale * self.weight[0], self.modulation(style), demodulate=self.demodulate,
            padding=self.padding, up=self.upsample, down=self.downsample, blur=getattr(self, "blur", None))


class NoiseInjection(nn.Module):
    """Adds ``weight × noise`` (noise (B or 1, 1, H, W), always passed in so that every draw is seeded)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class StyledConv(nn.Module):
    """Modulated conv (optionally up- or down-sampling) → noise injection → bias + leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 downsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL, demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, demodulate=demodulate,
                                    upsample=upsample, downsample=downsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """1×1 modulated conv to RGB (no demodulation) + bias, plus the upsampled RGB of the previous level."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    """The learned 4×4 input of the synthesis network, repeated over the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class ConvLayer(nn.Sequential):
    """[Blur →] EqualConv2d [→ FusedLeakyReLU]: rosinality's ``ConvLayer`` with its Sequential indices."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            layers.append(_down_blur(blur_kernel, kernel_size))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Discriminator residual block: two convs (the second downsamples) and a 1×1 downsampling skip, / √2."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = BLUR_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


# ----------------------------------------------------------------------------------------------------------------
# Generator


@dataclass
class GeneratorConfig:
    """Sizes of the generator; the defaults build the FFHQ config-f 1024 model (30,370,060 parameters)."""

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    blur_kernel: tuple[float, ...] = BLUR_KERNEL
    lr_mlp: float = 0.01
    channel_max: int | None = None  # cap on the channel table (tiny test models only)

    def __post_init__(self) -> None:
        self.blur_kernel = tuple(self.blur_kernel)
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"generator size must be a power of two ≥ 8, got {self.size}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def num_layers(self) -> int:
        """Noise-injection layers: conv1 plus two per resolution from 8 px."""
        return 2 * (self.log_size - 2) + 1

    @property
    def n_latent(self) -> int:
        """Rows of W+ the synthesis network reads (18 at 1024 px)."""
        return 2 * self.log_size - 2

    def channels(self, resolution: int) -> int:
        return stylegan_channels(resolution, self.channel_multiplier, self.channel_max)


class SynthesisOutput(NamedTuple):
    """Feature taps at 4, 8, 16, … px (conv1, then the first conv of each resolution) and the image if asked."""

    features: list[torch.Tensor]
    image: torch.Tensor | None


class Generator(nn.Module):
    """rosinality's StyleGAN2 generator (mapping ``style`` + synthesis) with feature taps and early stopping."""

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        self.config = cfg = config or GeneratorConfig()
        self.size, self.style_dim = cfg.size, cfg.style_dim
        self.log_size, self.num_layers, self.n_latent = cfg.log_size, cfg.num_layers, cfg.n_latent
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp, activation=True) for _ in range(cfg.n_mlp)])
        c4 = cfg.channels(4)
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, cfg.style_dim, blur_kernel=cfg.blur_kernel)
        self.to_rgb1 = ToRGB(c4, cfg.style_dim, upsample=False, blur_kernel=cfg.blur_kernel)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        in_channel = c4
        for i in range(3, cfg.log_size + 1):
            out_channel = cfg.channels(2 ** i)
            self.convs.append(StyledConv(in_channel, out_channel, 3, cfg.style_dim, upsample=True,
                                         blur_kernel=cfg.blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, cfg.style_dim, blur_kernel=cfg.blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, cfg.style_dim, blur_kernel=cfg.blur_kernel))
            in_channel = out_channel
        for idx in range(cfg.num_layers):
            res = 2 ** ((idx + 5) // 2)
            self.noises.register_buffer(f"noise_{idx}", torch.randn(1, 1, res, res))

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent z (B, style_dim) to W (B, style_dim)."""
        return self.style(z)

    def tap_resolutions(self) -> list[int]:
        """Resolutions of the feature taps, in output order (4, 8, …, size)."""
        return [2 ** i for i in range(2, self.log_size + 1)]

    def noise_resolutions(self, max_resolution: int | None = None, return_image: bool = False) -> list[int]:
        """Resolution of every noise layer a forward with these arguments uses, in layer order."""
        stop = self.size if return_image or max_resolution is None else int(max_resolution)
        if stop not in self.tap_resolutions():
            raise InputError(f"max_resolution must be one of {self.tap_resolutions()}, got {max_resolution}")
        # Without the image, the last level needs only its first conv; its second conv would feed nothing.
        n = self.num_layers if return_image else max(1, 2 * int(math.log2(stop)) - 4)
        return [2 ** ((idx + 5) // 2) for idx in range(n)]

    def make_noise(self, batch: int, generator: torch.Generator | None = None, *, max_resolution: int | None = None,
                   return_image: bool = False, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """The noise of every layer a forward with these arguments uses, drawn from ``generator``.

        The layers the taps need are drawn first, in one call, and the extra layers of the image in a second, so
        the taps get the same noise whether or not the image is computed.
        """
        like = torch.empty(0, device=device or self.input.input.device, dtype=dtype)
        taps = self.noise_resolutions(max_resolution)
        full = self.noise_resolutions(max_resolution, return_image)
        return flat_noise(batch, taps, like, generator) + flat_noise(batch, full[len(taps):], like, generator)

    def forward(self, latent: torch.Tensor, *, noise: Sequence[torch.Tensor] | None = None,
                generator: torch.Generator | None = None, max_resolution: int | None = None,
                return_image: bool = False) -> SynthesisOutput:
        """Run the synthesis network on W+ codes.

        ``latent`` is (B, ≥n_latent, style_dim) W+ (or (B, style_dim), broadcast to every layer).
        ``noise[i]`` is the noise of layer ``i`` in rosinality's order (``noises.noise_i`` has its shape; a batch
        dimension of 1 broadcasts); without it, :meth:`make_noise` draws it from ``generator``.
        Taps are computed up to ``max_resolution`` (default: all); ``return_image`` runs the whole network
        including the RGB path and overrides ``max_resolution``.
        """
        if latent.ndim == 2:
            latent = latent.unsqueeze(1).expand(-1, self.n_latent, -1)
        if latent.ndim != 3 or latent.shape[2] != self.style_dim:
            raise InputError(f"W+ codes must be (batch, layers, {self.style_dim}), got {tuple(latent.shape)}")
        stop_level = int(math.log2(self.noise_resolutions(max_resolution, return_image)[-1]))
        # Rows read: one per noise layer without the image; with it, the RGB layers read one more.
        rows = self.n_latent if return_image else len(self.noise_resolutions(max_resolution))
        if latent.shape[1] < rows:
            raise InputError(f"W+ codes have {latent.shape[1]} rows but {rows} are needed")
        if noise is None:
            noise = self.make_noise(latent.shape[0], generator, max_resolution=max_resolution,
                                    return_image=return_image, device=latent.device)
        needed = len(self.noise_resolutions(max_resolution, return_image))
        if len(noise) < needed:
            raise InputError(f"{needed} noise maps are needed (rosinality's layer order), got {len(noise)}")

        out = self.conv1(self.input(latent.shape[0]).to(latent.dtype), latent[:, 0], noise[0])
        features = [out]
        skip = self.to_rgb1(out, latent[:, 1]) if return_image else None
        i = 1
        for level in range(3, stop_level + 1):
            k = level - 3
            out = self.convs[2 * k](out, latent[:, i], noise[2 * k + 1])
            features.append(out)
            if level == stop_level and not return_image:
                break
            out = self.convs[2 * k + 1](out, latent[:, i + 1], noise[2 * k + 2])
            if return_image:
                skip = self.to_rgbs[k](out, latent[:, i + 2], skip)
            i += 2
        return SynthesisOutput(features, skip)


def _count_indexed(sd: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> int:
    idx = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix) and k.endswith(suffix)}
    return max(idx) + 1 if idx else 0


def infer_channel_table(found: Mapping[int, int]) -> tuple[int, int | None]:
    """(channel_multiplier, channel_max) that reproduce the channels found per resolution (config-f first)."""
    for cmax in (None, max(found.values())):
        for cm in (2, 1, 4, 8):
            if all(stylegan_channels(r, cm, cmax) == c for r, c in found.items()):
                return cm, cmax
    raise WeightsError(f"channel counts {dict(sorted(found.items()))} do not fit the StyleGAN2 channel table")


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> GeneratorConfig:
    """The generator configuration that has exactly the shapes in ``sd`` (``lr_mlp`` cannot be read: 0.01)."""
    try:
        n_levels = _count_indexed(sd, "to_rgbs.", ".conv.weight")
        style_dim = sd["conv1.conv.modulation.weight"].shape[1]
        found = {4: sd["conv1.conv.weight"].shape[1]}
        for k in range(n_levels):
            found[2 ** (k + 3)] = sd[f"convs.{2 * k}.conv.weight"].shape[1]
    except KeyError as e:
        raise WeightsError(f"not a StyleGAN2 generator state dict (missing {e})") from None
    cm, cmax = infer_channel_table(found)
    return GeneratorConfig(size=2 ** (n_levels + 2), style_dim=style_dim,
                           n_mlp=_count_indexed(sd, "style.", ".weight") - 1, channel_multiplier=cm,
                           channel_max=cmax)

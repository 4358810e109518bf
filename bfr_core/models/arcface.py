"""insightface's ArcFace "iresnet" face-recognition backbone (iresnet50 by default).

PGDiff's identity guidance embeds x̂₀ and a reference face with it. Names follow insightface's
``ms1mv3_arcface_r50_fp16.pth`` (a flat state dict), which loads with ``strict=True``.
:func:`arcface_input` is the preprocessing PGDiff uses: the whole [-1, 1] RGB face, resized to
112×112 (bilinear, antialiased), without ArcFace's own 5-point re-alignment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IResNetConfig", "IResNet", "config_from_state_dict", "arcface_input"]


@dataclass
class IResNetConfig:
    """Sizes of the backbone; the defaults build iresnet50 (43,590,848 parameters)."""

    layers: tuple[int, ...] = (3, 4, 14, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    num_features: int = 512
    input_size: int = 112  # the fc layer expects (input_size / 16)² positions

    def __post_init__(self) -> None:
        self.layers = tuple(int(n) for n in self.layers)
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.layers) != len(self.widths):
            raise ValueError("layers and widths need one entry per stage")


class IBasicBlock(nn.Module):
    """BN–conv3–BN–PReLU–conv3(stride)–BN with an identity or 1×1-conv+BN shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """``forward(x (B,3,S,S) in [-1,1] RGB at S = input_size) -> (B, num_features)`` unnormalised embedding.

    Use :meth:`embed` to feed a face crop of any size (it applies :func:`arcface_input`).
    """

    def __init__(self, config: IResNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or IResNetConfig()
        self.conv1 = nn.Conv2d(3, cfg.widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.widths[0], eps=1e-5)
        self.prelu = nn.PReLU(cfg.widths[0])
        inplanes = cfg.widths[0]
        for i, (n, w) in enumerate(zip(cfg.layers, cfg.widths)):
            blocks = [IBasicBlock(inplanes, w, stride=2)] + [IBasicBlock(w, w) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = w
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-5)
        side = cfg.input_size // 2 ** len(cfg.layers)
        self.fc = nn.Linear(inplanes * side * side, cfg.num_features)
        self.features = nn.BatchNorm1d(cfg.num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for i in range(len(self.config.layers)):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))

    def embed(self, face: torch.Tensor) -> torch.Tensor:
        """Embedding (float32) of [-1, 1] RGB faces of any size, preprocessed as PGDiff does."""
        dtype = self.conv1.weight.dtype
        return self(arcface_input(face, self.config.input_size).to(dtype)).float()


def arcface_input(face: torch.Tensor, size: int = 112) -> torch.Tensor:
    """Resize a (B, 3, H, W) [-1, 1] RGB face to size×size, bilinear with antialiasing (PGDiff's recipe)."""
    if face.shape[-2:] == (size, size):
        return face
    return F.interpolate(face, (size, size), mode="bilinear", antialias=True, align_corners=False)


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> IResNetConfig:
    """Infer an :class:`IResNetConfig` from a flat insightface state dict."""
    counts: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(r"^layer(\d+)\.(\d+)\.", k)
        if m:
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(counts)
    widths = tuple(int(sd[f"layer{s}.0.conv1.weight"].shape[0]) for s in stages)
    fc_in = int(sd["fc.weight"].shape[1])
    side = round((fc_in / widths[-1]) ** 0.5)
    return IResNetConfig(
        layers=tuple(len(counts[s]) for s in stages),
        widths=widths,
        num_features=int(sd["fc.weight"].shape[0]),
        input_size=side * 2 ** len(stages),
    )

"""MTCNN (Zhang et al., 2016): the P-Net, R-Net and O-Net of the cascaded face detector.

Parameter names are those of facenet-pytorch's state dicts (``conv1.weight``, ``prelu1.weight``,
``dense4.weight`` …), nested here under ``pnet.``, ``rnet.`` and ``onet.``. Those weights were converted
from a TensorFlow graph that saw images transposed, so the dense layers read the last feature map flattened
in (width, height, channel) order. The networks take RGB in 0..255 mapped by ``(x - 127.5) / 128``.

The cascade that runs them (pyramid, proposals, NMS, crops) is :mod:`bfr_core.faces.mtcnn`; the pyramid
and stage settings live in :class:`MTCNNConfig` so a saved detector carries them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

__all__ = ["MTCNNConfig", "MTCNN", "PNet", "RNet", "ONet", "config_from_state_dict"]


@dataclass
class MTCNNConfig:
    """Cascade settings; the defaults are the paper's (faces from 20 px, pyramid step 0.709, P/R thresholds 0.6/0.7).

    The O-Net threshold is the detector's score threshold (``detect_faces(score_threshold=...)``).
    """

    min_face_size: float = 20.0
    scale_factor: float = 0.709
    pnet_threshold: float = 0.6
    rnet_threshold: float = 0.7

    def __post_init__(self) -> None:
        if self.min_face_size < 12 or not 0.1 <= self.scale_factor < 1:
            raise ValueError(f"need min_face_size ≥ 12 and 0.1 ≤ scale_factor < 1, got {self.min_face_size} and {self.scale_factor}")


def _conv_prelu(cin: int, cout: int, k: int) -> tuple[nn.Conv2d, nn.PReLU]:
    return nn.Conv2d(cin, cout, k), nn.PReLU(cout)


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, W·H·C): the order the converted dense weights expect."""
    return x.permute(0, 3, 2, 1).flatten(1)


def _face_prob(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Probability of the 'face' class from two-class logits along ``dim`` (softmax, channel 1)."""
    return F.softmax(logits.float(), dim=dim).select(dim, 1)


class PNet(nn.Module):
    """Proposal net, fully convolutional: 12×12 windows at stride 2 → face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 10, 3)
        self.conv2, self.prelu2 = _conv_prelu(10, 16, 3)
        self.conv3, self.prelu3 = _conv_prelu(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) → probability (B, H', W') and offsets (B, 4, H', W'), H' = ⌈(H - 2) / 2⌉ - 4."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return _face_prob(self.conv4_1(x), 1), self.conv4_2(x).float()


class RNet(nn.Module):
    """Refinement net on 24×24 crops → face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 28, 3)
        self.conv2, self.prelu2 = _conv_prelu(28, 48, 3)
        self.conv3, self.prelu3 = _conv_prelu(48, 64, 2)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 24, 24) → probability (N,) and offsets (N, 4)."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_whc(self.prelu3(self.conv3(x)))))
        return _face_prob(self.dense5_1(x), 1), self.dense5_2(x).float()


class ONet(nn.Module):
    """Output net on 48×48 crops → face probability, box offsets and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 32, 3)
        self.conv2, self.prelu2 = _conv_prelu(32, 64, 3)
        self.conv3, self.prelu3 = _conv_prelu(64, 64, 3)
        self.conv4, self.prelu4 = _conv_prelu(64, 128, 2)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, 48, 48) → probability (N,), offsets (N, 4) and landmarks (N, 5, 2) as fractions of the crop.

        Landmarks: left eye, right eye, nose, left and right mouth corner, as seen in the image.
        """
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_whc(self.prelu4(self.conv4(x)))))
        pts = self.dense6_3(x).float().unflatten(1, (2, 5)).transpose(1, 2)  # stored as x0..x4, y0..y4
        return _face_prob(self.dense6_1(x), 1), self.dense6_2(x).float(), pts


class MTCNN(nn.Module):
    """The three MTCNN networks and the cascade settings (run by :func:`bfr_core.faces.mtcnn.mtcnn_detect`)."""

    def __init__(self, config: MTCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or MTCNNConfig()
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> MTCNNConfig:
    """The architecture has no size options: check that ``sd`` has the three nets and return the defaults."""
    missing = [k for k in ("pnet.conv4_2.weight", "rnet.dense5_2.weight", "onet.dense6_3.weight") if k not in sd]
    if missing:
        raise WeightsError(f"not an MTCNN state dict (missing {', '.join(missing)})")
    return MTCNNConfig()

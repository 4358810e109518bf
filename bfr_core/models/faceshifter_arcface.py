"""FaceShifter's identity network, the one VSPBFR's release trains with (``Arcface.pth``).

Despite its file name it is not insightface's ArcFace iresnet: it is torchvision's ResNet-101 (bottleneck
blocks 3-4-23-3) with a 256-d output layer, as built by ``torchvision.models.resnet101(num_classes=256)``.
We subclass torchvision's ``ResNet`` so the state-dict names are exactly the released file's (``conv1.weight``,
``layer3.22.bn3.running_var``, ``fc.weight`` ...) and it loads with ``strict=True``.

Preprocessing is the release's: the whole [-1, 1] RGB face, resized to 112×112 with plain bilinear
interpolation (no antialiasing, no crop, no mean/std normalisation); embeddings are compared by cosine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torchvision.models.resnet import Bottleneck, ResNet

from ..errors import WeightsError

__all__ = ["FaceShifterArcFaceConfig", "FaceShifterArcFace", "config_from_state_dict", "faceshifter_input"]


@dataclass
class FaceShifterArcFaceConfig:
    """Sizes of the network; the defaults build the released ResNet-101/256 (43,024,704 parameters)."""

    layers: tuple[int, ...] = (3, 4, 23, 3)  # bottleneck blocks per stage (torchvision's resnet101)
    num_features: int = 256
    input_size: int = 112

    def __post_init__(self) -> None:
        self.layers = tuple(int(n) for n in self.layers)
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"a torchvision ResNet has four stages of ≥ 1 block, got layers={self.layers}")


class FaceShifterArcFace(ResNet):
    """``forward(x (B, 3, S, S) in [-1, 1])`` → (B, num_features) unnormalised identity embedding.

    Any input size works (global average pooling); :meth:`embed` applies the release's 112 px resize first.
    """

    def __init__(self, config: FaceShifterArcFaceConfig | None = None):
        cfg = config or FaceShifterArcFaceConfig()
        super().__init__(Bottleneck, list(cfg.layers), num_classes=cfg.num_features)
        self.config = cfg

    def embed(self, face: torch.Tensor) -> torch.Tensor:
        """Embedding (float32) of [-1, 1] RGB faces of any size, preprocessed as VSPBFR's identity loss does."""
        dtype = self.conv1.weight.dtype
        return self(faceshifter_input(face, self.config.input_size).to(dtype)).float()


def faceshifter_input(face: torch.Tensor, size: int = 112) -> torch.Tensor:
    """Resize a (B, 3, H, W) [-1, 1] face to size×size, bilinear without antialiasing (the release's call)."""
    if face.shape[-2:] == (size, size):
        return face
    return F.interpolate(face, size=(size, size), mode="bilinear", align_corners=False)


_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.conv1\.weight$")


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> FaceShifterArcFaceConfig:
    """The configuration with the shapes in ``sd`` (blocks per stage and the output width)."""
    blocks = {1: 0, 2: 0, 3: 0, 4: 0}
    for key in sd:
        m = _BLOCK.match(key)
        if m:
            stage, index = int(m.group(1)), int(m.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    try:
        fc = sd["fc.weight"]
        if tuple(sd["conv1.weight"].shape) != (64, 3, 7, 7) or fc.shape[1] != 2048:
            raise ValueError(f"conv1 {tuple(sd['conv1.weight'].shape)}, fc {tuple(fc.shape)}")
        return FaceShifterArcFaceConfig(layers=tuple(blocks[s] for s in range(1, 5)), num_features=int(fc.shape[0]))
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not a torchvision ResNet-101 identity network (FaceShifter Arcface.pth): {e!r}") from None

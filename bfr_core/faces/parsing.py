"""Optional face-parsing masks for paste-back (facexlib's BiSeNet or ParseNet, weights from a given file).

A parsing mask keeps hair, background and clothing of the original photo and pastes only the face
itself; :func:`parse_masks` returns soft (N, S, S) masks for ``paste_faces(..., crop_masks=...)``.
The networks come from facexlib; its ``init_parsing_model`` is not used because it downloads into
site-packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, WeightsError

__all__ = ["PARSER_KINDS", "FaceParser", "parser_kind_from_state_dict", "build_parser", "load_parser", "parse_masks"]

PARSER_KINDS = ("bisenet", "parsenet")

# Classes pasted from the restored face. BiSeNet (face-parsing.PyTorch label order): skin, brows, eyes,
# glasses, ears, earring, nose, mouth, lips. ParseNet (PSFRGAN order): the classes facexlib pastes,
# i.e. everything but background, hat, necklace, neck and cloth.
_FACE_CLASSES = {"bisenet": tuple(range(1, 14)), "parsenet": tuple(range(1, 14)) + (15,)}


class FaceParser(nn.Module):
    """A face-parsing network with its input normalisation; ``forward`` gives (N, 19, H, W) class logits."""

    def __init__(self, kind: str, net: nn.Module) -> None:
        super().__init__()
        if kind not in PARSER_KINDS:
            raise InputError(f"unknown face parser {kind!r}; choose one of {', '.join(PARSER_KINDS)}.")
        self.kind = kind
        self.net = net.eval()
        if kind == "bisenet":  # ImageNet statistics
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        else:  # [-1, 1]
            mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @property
    def face_classes(self) -> tuple[int, ...]:
        return _FACE_CLASSES[self.kind]

    @torch.inference_mode()
    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = (rgb - self.mean) / self.std
        dtype = next(self.net.parameters()).dtype
        return self.net(x.to(dtype))[0].float()


def parser_kind_from_state_dict(sd: Mapping[str, torch.Tensor]) -> str:
    keys = set(sd)
    if any(k.startswith("cp.resnet.") for k in keys):
        return "bisenet"
    if any(k.startswith("encoder.") for k in keys) and any(k.startswith("parsing_out") or k.startswith("decoder.") for k in keys):
        return "parsenet"
    raise WeightsError("this file is not a BiSeNet or ParseNet face parser; use parsing_bisenet.pth or parsing_parsenet.pth.")


def build_parser(kind: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> FaceParser:
    """Build a parser of ``kind``; load ``state_dict`` strictly when given (random weights otherwise, for tests)."""
    try:
        from facexlib.parsing.bisenet import BiSeNet
        from facexlib.parsing.parsenet import ParseNet
    except ImportError as e:
        raise WeightsError(f"face parsing needs the facexlib package ({e}); install it with `pip install facexlib`.") from e
    if kind not in PARSER_KINDS:
        raise InputError(f"unknown face parser {kind!r}; choose one of {', '.join(PARSER_KINDS)}.")
    net = BiSeNet(num_class=19) if kind == "bisenet" else ParseNet(in_size=512, out_size=512, parsing_ch=19)
    if state_dict is not None:
        try:
            missing, unexpected = net.load_state_dict(dict(state_dict), strict=False)
        except RuntimeError as e:  # shape mismatches
            raise WeightsError(f"the weights do not fit the {kind} face parser: {str(e).splitlines()[-1].strip()}") from None
        if missing or unexpected:
            raise WeightsError(
                f"the weights do not fit the {kind} face parser: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})."
            )
    return FaceParser(kind, net)


def load_parser(weights: str | Path, kind: str = "auto", device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> FaceParser:
    """Build a face parser from a weights file (safe loading only; nothing is downloaded)."""
    from ..weights.files import load_checkpoint

    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"face parsing weights not found at {path}; put the file there (ComfyUI: models/facedetection).")
    sd = load_checkpoint(path).tensors
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    found = parser_kind_from_state_dict(sd)
    if kind not in ("auto", found):
        raise WeightsError(f"{path.name} holds a {found} face parser, not {kind}.")
    return build_parser(found, sd).to(device=device, dtype=dtype)


@torch.inference_mode()
def parse_masks(crops: torch.Tensor, parser: FaceParser, *, blur: float = 0.03, chunk: int = 8,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Soft face masks (N, S, S) for aligned crops (N, S, S, 3) IMAGE.

    The mask is the summed probability of the face classes (soft, so no jagged class borders), then a
    Gaussian blur of ``blur × S`` pixels (relative to the face, like the paste feather). Crops are run
    at 512², the parsers' training size.
    """
    from kornia.filters import gaussian_blur2d

    if crops.dim() != 4 or crops.shape[-1] < 3:
        raise InputError(f"face parsing needs an IMAGE batch of aligned crops (N, S, S, 3), got {tuple(crops.shape)}.")
    dev = torch.device(device) if device is not None else parser.mean.device
    n, s = crops.shape[0], crops.shape[1]
    out = torch.zeros(n, s, s)
    keep = list(parser.face_classes)
    for i in range(0, n, chunk):
        x = crops[i:i + chunk, ..., :3].to(dev).permute(0, 3, 1, 2).float()
        if s != 512:
            x = F.interpolate(x, size=(512, 512), mode="bilinear", antialias=True, align_corners=False)
        prob = parser(x).softmax(1)[:, keep].sum(1, keepdim=True)
        if s != 512:
            prob = F.interpolate(prob, size=(s, s), mode="bilinear", align_corners=False)
        if blur > 0:
            sigma = blur * s
            k = int(2 * round(3 * sigma) + 1)
            prob = gaussian_blur2d(prob, (k, k), (sigma, sigma))
        out[i:i + chunk] = prob[:, 0].clamp(0, 1).cpu()
    return out

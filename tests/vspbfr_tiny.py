"""Tiny VSPBFR configurations and deterministic random weights, shared by the VSPBFR tests.

The same configurations exist in the official code with its channel tables capped at 16 (and e4e's backbone cut
to one unit per stage); the golden numbers in ``test_vspbfr_golden.py`` were recorded from that code with the
weights built here.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from bfr_core.models.code_diffuser import CodeDiffuser, CodeDiffuserConfig
from bfr_core.models.e4e import E4EConfig, Encoder4Editing
from bfr_core.models.smart import RestorationNet, RestorationNetConfig
from bfr_core.models.stylegan2 import Generator, GeneratorConfig
from bfr_core.models.vspbfr_discriminator import Discriminator, DiscriminatorConfig

TINY_CONFIGS = {
    "e4e": (Encoder4Editing, E4EConfig(n_styles=10, style_dim=16, input_size=64, units=(1, 1, 1, 1),
                                       depths=(8, 12, 16, 20), se_reduction=4)),
    "stylegan2": (Generator, GeneratorConfig(size=64, style_dim=16, n_mlp=2, channel_max=16)),
    "code_diffuser": (CodeDiffuser, CodeDiffuserConfig(latent_dim=16)),
    "restorer": (RestorationNet, RestorationNetConfig(size=32, style_dim=16, n_mlp=2, channel_max=16)),
    "discriminator": (Discriminator, DiscriminatorConfig(size=32, channel_max=16)),
}


def random_state_dict(model: nn.Module, seed: int = 0, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """The model's (seeded) initial values plus scale·std·N(0, 1) per tensor, drawn from a per-key generator.

    Zero or constant tensors (biases, noise strengths, modulation biases) get absolute N(0, scale²) noise, so no
    path is trivially zero; running variances become 1 + 0.2|N|; FIR kernels and counters are kept.
    """
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point() or k.endswith("kernel"):
            out[k] = v.clone()
            continue
        g = torch.Generator().manual_seed(seed * 1000003 + zlib.crc32(k.encode()))
        r = torch.randn(v.shape, generator=g)
        if k.endswith("running_var"):
            out[k] = 1.0 + 0.2 * r.abs()
            continue
        std = v.float().std().item() if v.numel() > 1 else 0.0
        out[k] = v + scale * (std if std > 0 else 1.0) * r
    return out


def build(kind: str, seed: int = 0) -> nn.Module:
    """A tiny model of ``kind`` with deterministic random weights, in eval mode."""
    cls, cfg = TINY_CONFIGS[kind]
    torch.manual_seed(1000 + seed)
    model = cls(cfg)
    model.load_state_dict(random_state_dict(model, seed), strict=True)
    return model.eval()

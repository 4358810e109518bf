"""e4e's latent-code discriminator on W (VSPBFR stage 1), with the W pools it trains from.

The network is e4e's ``LatentCodesDiscriminator(512, 4)``: three Linear + LeakyReLU(0.2) layers and a linear
logit, on single W vectors (B, style_dim) → (B, 1). Parameter names (``mlp.0.weight`` … ``mlp.6.bias``) are
the ones in e4e's ``discriminator_state_dict``.

e4e trains it on codes drawn through two *pools* of past codes (real: mapped random z; fake: encoder rows),
the image-pool trick of CycleGAN. The pools are training state, so they live here as persistent buffers and
travel with the discriminator's checkpoints (a resumed run continues with the same pool contents).
:meth:`LatentCodesDiscriminator.query_pool` decides on the host and moves codes with index ops on the device,
so it never waits for the GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..errors import InputError, WeightsError

__all__ = ["LatentDiscriminatorConfig", "LatentCodesDiscriminator", "config_from_state_dict"]


@dataclass
class LatentDiscriminatorConfig:
    """Sizes; the defaults are e4e's (style_dim 512, 4 linear layers, pools of 50 codes)."""

    style_dim: int = 512
    n_mlp: int = 4
    pool_size: int = 50  # 0: no pools (codes go straight to the discriminator)

    def __post_init__(self) -> None:
        if self.n_mlp < 1 or self.pool_size < 0:
            raise ValueError(f"need n_mlp ≥ 1 and pool_size ≥ 0, got {self.n_mlp} and {self.pool_size}")


class LatentCodesDiscriminator(nn.Module):
    """W vectors (B, style_dim) → realness logits (B, 1); plus the real and fake W pools (see the module doc)."""

    POOLS = ("real", "fake")

    def __init__(self, config: LatentDiscriminatorConfig | None = None):
        super().__init__()
        self.config = cfg = config or LatentDiscriminatorConfig()
        layers: list[nn.Module] = []
        for _ in range(cfg.n_mlp - 1):
            layers += [nn.Linear(cfg.style_dim, cfg.style_dim), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(cfg.style_dim, 1))
        self.mlp = nn.Sequential(*layers)
        for name in self.POOLS:
            self.register_buffer(f"{name}_pool", torch.zeros(cfg.pool_size, cfg.style_dim))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.ndim != 2 or w.shape[1] != self.config.style_dim:
            raise InputError(f"the latent discriminator takes W vectors (batch, {self.config.style_dim}), "
                             f"got {tuple(w.shape)}")
        return self.mlp(w)

    @torch.no_grad()
    def query_pool(self, name: str, codes: torch.Tensor, filled: int, generator: torch.Generator) -> torch.Tensor:
        """e4e's ``LatentCodesPool.query``: (B, style_dim) or (B, rows, style_dim) codes → (B, style_dim).

        For each sample in turn (one row picked at random when it has several; without pools, the first row):
        while the pool holds fewer than ``pool_size`` codes it is stored and returned; afterwards, with
        probability ½, a random stored code is returned and replaced by it, otherwise it is returned as it is.
        ``filled`` is how many codes the pool held before this call (the caller counts them: pools fill at a
        fixed rate), ``generator`` a CPU generator: every decision is made on the host, the codes never leave
        the device.
        """
        if name not in self.POOLS:
            raise InputError(f"pool must be one of {self.POOLS}, got {name!r}")
        b, size = codes.shape[0], self.config.pool_size
        if size == 0:  # e4e without pools: the first row of multi-row codes
            return codes[:, 0] if codes.ndim == 3 else codes
        if codes.ndim == 3:
            rows = torch.randint(0, codes.shape[1], (b,), generator=generator).tolist()
            codes = codes[torch.arange(b, device=codes.device), torch.tensor(rows, device=codes.device)]
        pool: torch.Tensor = getattr(self, f"{name}_pool")
        # Sources index cat([pool, codes]): j < size is a stored slot, size + i is this call's sample i.
        slots = list(range(size))
        returned = []
        filled = min(int(filled), size)
        draws = torch.rand(b, generator=generator).tolist()
        picks = torch.randint(0, size, (b,), generator=generator).tolist()
        for i in range(b):
            if filled < size:
                slots[filled] = size + i
                filled += 1
                returned.append(size + i)
            elif draws[i] > 0.5:
                returned.append(slots[picks[i]])
                slots[picks[i]] = size + i
            else:
                returned.append(size + i)
        source = torch.cat([pool, codes.to(pool.dtype)])
        pool.copy_(source[torch.tensor(slots, device=pool.device)])
        return source[torch.tensor(returned, device=pool.device)].to(codes.dtype)


_LINEAR = re.compile(r"^mlp\.(\d+)\.weight$")


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> LatentDiscriminatorConfig:
    """The configuration with the shapes in ``sd`` (e4e's files have no pools: pool_size is then e4e's 50)."""
    try:
        n_linear = len([k for k in sd if _LINEAR.match(k)])
        style_dim = int(sd["mlp.0.weight"].shape[1])
        pool = sd.get("real_pool")
        return LatentDiscriminatorConfig(style_dim=style_dim, n_mlp=n_linear,
                                         pool_size=int(pool.shape[0]) if pool is not None else 50)
    except (KeyError, ValueError) as e:
        raise WeightsError(f"not a latent-codes discriminator state dict ({e!r})") from None

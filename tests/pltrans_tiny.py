"""Tiny PLTrans / VQGAN configurations for fast CPU tests (32 px faces, 8×8 feature grids)."""

from __future__ import annotations

from bfr_core.models.pltrans import PLTransConfig
from bfr_core.models.vq import VQGANConfig

TINY = dict(
    resolution=32, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=32,
    num_heads=4, norm_groups=8, n_embed=64, embed_dim=32,
)


def tiny_vq(**overrides) -> VQGANConfig:
    return VQGANConfig(**{**TINY, **overrides})


def tiny_pltrans(**overrides) -> PLTransConfig:
    cfg = dict(
        TINY, top_d=8, prior_heads=4, lt_blocks=1, lt_mlp_ratio=2, cross_blocks=2, cross_heads=4,
        latent_channels=4, mapper_channels=16, unet_channels=16, unet_channel_mult=(1, 2), unet_res_blocks=1,
        unet_attn_resolutions=(4,), unet_head_channels=8, dwt_levels=2,
    )
    cfg.update(overrides)
    return PLTransConfig(**cfg)



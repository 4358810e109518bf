"""VSPBFR stage 2: the code diffuser, trained as released (seeds-reference §1.3).

The fine-tuned style encoder E (e4e) and the StyleGAN2 decoder G are frozen. For a degraded face x and its
ground truth y: w_gt = E(y), w_lq = E(x); the chain starts from the *noised degraded codes*
w_T = √ᾱ_T·w_lq + √(1−ᾱ_T)·ε and is unrolled through all T = 4 deterministic x0 steps with gradients
(:func:`bfr_core.sampling.wplus.sample_x0`). Loss: ``code_l1_weight``·L1(ŵ₀, w_gt) plus the configured
image losses (released: 0.1·LPIPS-VGG + 0.1·identity) between G(ŵ₀), average-pooled to the data size, and y.
Gradients reach the diffuser through the frozen decoder. At sampling time the chain starts from N(0, I),
as the released inference does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bfr_core.sampling import wplus
from bfr_core.seeding import randn

from ..config import check
from . import StepContext, register_stage

log = logging.getLogger(__name__)

VSPBFR_LICENCE_HINT = (
    "VSPBFR's code is MIT; its StyleGAN2 decoder weights derive from NVIDIA's FFHQ model (NVIDIA non-commercial "
    "licence), so weights trained on top of them inherit that restriction."
)


@dataclass
class CodeDiffuserOptions:
    timesteps: int = 4
    beta_start: float = 0.1  # β = (linspace(√beta_start, √beta_end, T))², the released schedule
    beta_end: float = 0.99
    code_l1_weight: float = 1.0

    def __post_init__(self) -> None:
        check(self.timesteps >= 1, "stage_options.timesteps must be ≥ 1")
        check(0 < self.beta_start < self.beta_end < 1, "stage_options: need 0 < beta_start < beta_end < 1")
        check(self.code_l1_weight >= 0, "stage_options.code_l1_weight must be ≥ 0")


def _setup(ctx: StepContext) -> wplus.WPlusSchedule:
    o = ctx.options
    diffuser_t = ctx.unwrap("diffuser").config.timesteps
    if diffuser_t != o.timesteps:
        raise ValueError(f"stage_options.timesteps={o.timesteps} but the diffuser was built for {diffuser_t} steps")
    encoder = ctx.unwrap("encoder")
    if not encoder.latent_avg.any():
        # An encoder without trained weights: give it e4e's starting point, the decoder's mean W (psp computes
        # it the same way when a checkpoint lacks it), so that its codes look like W+ codes.
        gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
        decoder = ctx.unwrap("decoder")
        z = torch.randn(10_000, decoder.style_dim, generator=gen).to(encoder.latent_avg.device)
        with torch.no_grad():
            encoder.latent_avg.copy_(decoder.mapping(z).mean(0).expand_as(encoder.latent_avg))
        log.warning("the style encoder has no latent_avg: using the decoder's mean W (no pretrained encoder given?)")
    return wplus.vspbfr_schedule(o.timesteps, o.beta_start, o.beta_end)


def _image(ctx: StepContext, codes: torch.Tensor, size: int) -> torch.Tensor:
    """G(codes) with seeded noise, average-pooled to ``size`` (the released loss compares at the data size)."""
    image = ctx.models["decoder"](codes, generator=ctx.generator, return_image=True).image
    return F.adaptive_avg_pool2d(image, size) if image.shape[-1] != size else image


def _diffuser_sample(ctx: StepContext, batch: dict) -> dict:
    enc, diffuser = ctx.models["encoder"], ctx.models["diffuser"]
    size = batch["hq"].shape[-1]
    w_lq = enc(batch["lq"])
    w0 = wplus.sample_x0(diffuser, w_lq, ctx.state, generator=ctx.generator)
    return {"degraded": batch["lq"], "inverted": _image(ctx, w_lq, size), "restored": _image(ctx, w0, size),
            "target": batch["hq"]}


@register_stage(
    "vspbfr_code_diffuser", options=CodeDiffuserOptions, models=("diffuser", "encoder", "decoder"),
    trainable=("diffuser",), sample=_diffuser_sample, setup=_setup, licence_hint=VSPBFR_LICENCE_HINT,
)
def code_diffuser_step(ctx: StepContext, batch: dict) -> dict:
    """VSPBFR's code diffuser: W+ codes of the degraded face → codes of the clean face, through a frozen StyleGAN2."""
    enc, diffuser = ctx.models["encoder"], ctx.models["diffuser"]
    sched: wplus.WPlusSchedule = ctx.state
    with torch.no_grad():
        w_gt, w_lq = enc(batch["hq"]), enc(batch["lq"])
    w_start = wplus.q_sample(w_lq, sched.num_timesteps - 1, randn(w_lq.shape, ctx.generator, device=ctx.device), sched)
    w0 = wplus.sample_x0(diffuser, w_lq, sched, start=w_start)
    code_l1 = F.l1_loss(w0.float(), w_gt.float())
    image_loss, parts = ctx.losses(_image(ctx, w0, batch["hq"].shape[-1]), batch["hq"])
    loss = ctx.options.code_l1_weight * code_l1 + image_loss
    ctx.backward(loss)
    return {"loss": loss, "code_l1": code_l1.detach(), **parts}

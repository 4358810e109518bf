"""VSPBFR's three training stages (seeds-reference §0.2 and §1.3).

Stage 1, ``vspbfr_style_encoder``: e4e fine-tuned on degraded faces (see :func:`style_encoder_step`); its export
holds the encoder with its frozen StyleGAN2 decoder (``encoder.*``, ``decoder.*``, as style_encoder_decoder.pt), the
file the VSPBFR loader's style_encoder input and stages 2 and 3 (``init:``) read.
Stage 3, ``vspbfr_restoration``: the SMART restoration network against its discriminator (see
:func:`restoration_step`).

Stage 2, ``vspbfr_code_diffuser``: the code diffuser, trained as released.
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
from bfr_core.seeding import derive_seed, randn

from ..config import ConfigError, check
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
    _ensure_latent_avg(ctx)
    return wplus.vspbfr_schedule(o.timesteps, o.beta_start, o.beta_end)


def _ensure_latent_avg(ctx: StepContext) -> None:
    """Give an encoder without trained weights e4e's starting point, the decoder's mean W.

    psp computes it the same way when a checkpoint lacks it, so that the codes look like W+ codes from the
    first step. (The trainer copies the exported model for its EMA before this runs: when the encoder is the
    exported model, its configs leave the EMA off, as e4e trains without one.)
    """
    encoder = ctx.unwrap("encoder")
    if encoder.latent_avg.any():
        return
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    decoder = ctx.unwrap("decoder")
    z = torch.randn(10_000, decoder.style_dim, generator=gen).to(encoder.latent_avg.device)
    with torch.no_grad():
        encoder.latent_avg.copy_(decoder.mapping(z).mean(0).expand_as(encoder.latent_avg))
    log.warning("the style encoder has no latent_avg: using the decoder's mean W (no pretrained encoder given?)")


def _check_codes_fit(ctx: StepContext) -> None:
    """The encoder's W+ rows and width must be the decoder's (they come from one e4e checkpoint)."""
    enc, dec = ctx.unwrap("encoder").config, ctx.unwrap("decoder")
    if enc.n_styles != dec.n_latent or enc.style_dim != dec.style_dim:
        raise ConfigError(f"models.encoder gives {enc.n_styles}×{enc.style_dim} W+ codes but models.decoder reads "
                          f"{dec.n_latent}×{dec.style_dim}; use the encoder and decoder of one e4e checkpoint")


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


# ------------------------------------------------------------------------------------ stage 1: style encoder


@dataclass
class StyleEncoderOptions:
    """e4e's objectives besides the image losses (which come from the config's ``losses`` list).

    Defaults are the VSPBFR e4e trainer's command line (e4e defaults otherwise): latent discriminator weight
    0.1 (lr via ``optim_overrides.w_discriminator``, e4e: 2e-5), R1 γ = 10 every 16 steps, delta-norm 2e-4 on the
    L2 norms of the deltas, progressive deltas from step 20k, one more row every 2k steps.
    """

    w_discriminator_weight: float = 0.1
    r1_gamma: float = 10.0
    r1_every: int = 16
    delta_norm_weight: float = 2e-4
    delta_norm_p: int = 2
    progressive_start: int | None = 20_000  # None: every delta row from the start (no progressive training)
    progressive_every: int = 2_000

    def __post_init__(self) -> None:
        check(self.w_discriminator_weight >= 0 and self.delta_norm_weight >= 0 and self.r1_gamma >= 0,
              "stage_options: loss weights and r1_gamma must be ≥ 0")
        check(self.r1_every >= 1 and self.progressive_every >= 1, "stage_options: r1_every and progressive_every must be ≥ 1")
        check(self.progressive_start is None or self.progressive_start >= 0, "stage_options.progressive_start must be ≥ 0")


def progressive_stage(options: StyleEncoderOptions, step: int, n_styles: int) -> int:
    """Delta rows in use at ``step`` (e4e's ProgressiveStage): 0 before the start, then one more every
    ``progressive_every`` steps up to n_styles − 1; n_styles (every row, e4e's Inference stage) without
    progressive training."""
    if options.progressive_start is None:
        return n_styles
    if step < options.progressive_start:
        return 0
    return min(n_styles - 1, 1 + (step - options.progressive_start) // options.progressive_every)


def _style_encoder_setup(ctx: StepContext) -> None:
    _check_codes_fit(ctx)
    if ctx.unwrap("w_discriminator").config.style_dim != ctx.unwrap("decoder").style_dim:
        raise ConfigError("models.w_discriminator.style_dim must be the decoder's style_dim")
    _ensure_latent_avg(ctx)


def _style_encoder_sample(ctx: StepContext, batch: dict) -> dict:
    codes = ctx.models["encoder"](batch["lq"])
    return {"degraded": batch["lq"], "restored": _image(ctx, codes, batch["hq"].shape[-1]), "target": batch["hq"]}


def _lazy_r1(ctx: StepContext, d: torch.nn.Module, real: torch.Tensor, slot: str) -> torch.Tensor:
    """StyleGAN2's lazy R1 in its own optimiser step of ``slot``: (γ/2)·E‖∇D(real)‖²·r1_every; returns E‖∇D‖²."""
    o = ctx.options
    real = real.detach().requires_grad_(True)
    pred = d(real)
    grad, = torch.autograd.grad(pred.sum(), real, create_graph=True)
    r1 = grad.pow(2).flatten(1).sum(1).mean()
    ctx.backward(o.r1_gamma / 2 * r1 * o.r1_every + 0 * pred[0, 0])  # 0·pred keeps every parameter in the graph
    ctx.optimizer_step(slot)
    return r1.detach()


def _w_discriminator_phase(ctx: StepContext, lq: torch.Tensor, rows: int) -> dict[str, torch.Tensor]:
    """e4e's latent-discriminator step: mapped random z (real) vs the encoder's first ``rows`` rows (fake), both
    through the pools when training; logistic loss, then lazy R1 on the real codes every ``r1_every`` steps."""
    d, b = ctx.models["w_discriminator"], lq.shape[0]
    with torch.no_grad():
        real_w = ctx.unwrap("decoder").mapping(randn((b, ctx.unwrap("decoder").style_dim), ctx.generator,
                                                     device=ctx.device))
        fake_w = ctx.models["encoder"](lq)[:, :rows]
    if ctx.training:  # through the pools (validation leaves them alone)
        pool_gen = torch.Generator().manual_seed(derive_seed(ctx.seed, f"w-pool/{ctx.micro}"))
        filled = b * ctx.step  # codes each pool has received before this step
        real_w = ctx.unwrap("w_discriminator").query_pool("real", real_w, filled, pool_gen)
        fake_w = ctx.unwrap("w_discriminator").query_pool("fake", fake_w, filled, pool_gen)
    else:
        fake_w = fake_w[:, 0]
    d_loss = F.softplus(-d(real_w)).mean() + F.softplus(d(fake_w)).mean()
    ctx.backward(d_loss)
    ctx.optimizer_step("w_discriminator")
    out = {"w_d_loss": d_loss.detach()}
    if ctx.training and ctx.step % ctx.options.r1_every == 0:
        out["w_r1"] = _lazy_r1(ctx, d, real_w, "w_discriminator")
    return out


@register_stage(
    "vspbfr_style_encoder", options=StyleEncoderOptions, models=("encoder", "decoder", "w_discriminator"),
    trainable=("encoder", "w_discriminator"), export="encoder", export_with=("decoder",),
    sample=_style_encoder_sample, setup=_style_encoder_setup, licence_hint=VSPBFR_LICENCE_HINT,
)
def style_encoder_step(ctx: StepContext, batch: dict) -> dict:
    """VSPBFR's style encoder: e4e fine-tuned to map degraded faces to the W+ codes of their clean versions.

    As e4e (``training/coach.py``) with the degraded face as input and the clean one as target: a latent
    discriminator on single W vectors is trained first (non-saturating logistic loss on mapped random z versus
    encoder rows, both through e4e's pools of past codes; lazy R1 on the real codes), then the encoder with the
    configured image losses between G(E(x)) average-pooled to the data size and y (released: 1.0·L2,
    0.8·LPIPS-alex, 0.5·identity), plus the discriminator's non-saturating loss on every row in use and the
    delta-norm Σᵢ E‖wᵢ − w₀‖ on the deltas in use. The StyleGAN2 decoder is frozen; its noise is random.
    """
    o: StyleEncoderOptions = ctx.options
    enc, d = ctx.models["encoder"], ctx.models["w_discriminator"]
    lq, hq = batch["lq"], batch["hq"]
    n_styles = ctx.unwrap("encoder").config.n_styles
    stage = progressive_stage(o, ctx.step, n_styles)
    ctx.unwrap("encoder").progressive_stage = stage
    rows = min(stage + 1, n_styles)  # w0 and the deltas in use
    out = _w_discriminator_phase(ctx, lq, rows) if o.w_discriminator_weight > 0 else {}

    codes = enc(lq)
    image_loss, parts = ctx.losses(_image(ctx, codes, hq.shape[-1]), hq)
    loss = image_loss
    if o.w_discriminator_weight > 0:
        with ctx.frozen(d):
            adv = F.softplus(-d(codes[:, :rows].reshape(-1, codes.shape[-1]))).mean()
        loss = loss + o.w_discriminator_weight * adv
        out["w_adv"] = adv.detach()
    if stage < n_styles and o.delta_norm_weight > 0:  # e4e regularises the deltas while training progressively
        deltas = codes[:, 1:stage + 1] - codes[:, :1]
        delta_norm = deltas.float().norm(p=o.delta_norm_p, dim=2).mean(0).sum()
        loss = loss + o.delta_norm_weight * delta_norm
        out["delta_norm"] = delta_norm.detach()
    ctx.backward(loss)
    out["progressive_stage"] = torch.tensor(float(stage), device=ctx.device)
    return {"loss": loss, "image_loss": image_loss.detach(), **parts, **out}


# ------------------------------------------------------------------------------------ stage 3: restoration


@dataclass
class RestorationOptions:
    """The released restoration training (``restoration_train.py``) besides the image losses (config ``losses``)."""

    timesteps: int = 4  # the frozen code diffuser's chain (released schedule)
    beta_start: float = 0.1
    beta_end: float = 0.99
    mixing_prob: float = 0.5  # style mixing of the restorer's random styles
    adv_weight: float = 1.0  # non-saturating generator loss
    r1_gamma: float = 10.0
    r1_every: int = 16
    # loss terms (by their names in ``losses``) reduced as a sum over the batch instead of a mean: the release
    # sums LPIPS over the batch (then × 0.5)
    batch_sum_losses: tuple[str, ...] = ("lpips",)

    def __post_init__(self) -> None:
        check(self.timesteps >= 1 and 0 < self.beta_start < self.beta_end < 1,
              "stage_options: need timesteps ≥ 1 and 0 < beta_start < beta_end < 1")
        check(0 <= self.mixing_prob <= 1, "stage_options.mixing_prob must be in [0, 1]")
        check(self.adv_weight >= 0 and self.r1_gamma >= 0 and self.r1_every >= 1,
              "stage_options: adv_weight and r1_gamma must be ≥ 0, r1_every ≥ 1")


def _restoration_setup(ctx: StepContext) -> wplus.WPlusSchedule:
    o: RestorationOptions = ctx.options
    _check_codes_fit(ctx)
    diffuser, restorer, dec = ctx.unwrap("diffuser").config, ctx.unwrap("restorer").config, ctx.unwrap("decoder")
    if diffuser.timesteps != o.timesteps:
        raise ConfigError(f"stage_options.timesteps={o.timesteps} but the diffuser was built for {diffuser.timesteps} steps")
    if dec.size < restorer.size or dec.n_latent < restorer.n_latent or dec.style_dim != restorer.style_dim:
        raise ConfigError(f"models.decoder ({dec.size} px, {dec.n_latent}×{dec.style_dim} codes) must be at least as "
                          f"large as models.restorer ({restorer.size} px, {restorer.n_latent}×{restorer.style_dim})")
    if ctx.unwrap("discriminator").config.size != restorer.size:
        raise ConfigError("models.discriminator.size must be models.restorer.size")
    unknown = [t for t in o.batch_sum_losses if not any(_matches(n, t) for n in ctx.losses.names)]
    if unknown:
        raise ConfigError(f"stage_options.batch_sum_losses: {', '.join(unknown)} not among the losses "
                          f"({', '.join(ctx.losses.names)})")
    _ensure_latent_avg(ctx)  # frozen helper here: only for tests without pretrained weights
    return wplus.vspbfr_schedule(o.timesteps, o.beta_start, o.beta_end)


@torch.no_grad()
def _prompts(ctx: StepContext, lq: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The frozen part of the release, once per batch: E(x) → 4-step diffusion from N(0, I) → StyleGAN2 taps.

    Draws the diffuser's start, then the bank's noise, from ``ctx.generator``. The diffuser runs in float32
    (as in the pipeline); the taps stop at the restorer's size.
    """
    size = ctx.unwrap("restorer").config.size
    w_lq = ctx.models["encoder"](lq).float()
    start = randn(w_lq.shape, ctx.generator, device=ctx.device)
    with torch.autocast(ctx.device.type, enabled=False):
        codes = wplus.sample_x0(ctx.models["diffuser"], w_lq, ctx.state, start=start)
    feats, _ = ctx.models["decoder"](codes, generator=ctx.generator, max_resolution=size)
    return codes, feats


def _random_styles(ctx: StepContext, batch: int) -> torch.Tensor:
    """The restorer's random styles with style mixing (z, z', crossover from ``ctx.generator``), mapped with grad."""
    net = ctx.unwrap("restorer")
    return net.styles_from_z(*net.sample_mixing(batch, ctx.generator, ctx.options.mixing_prob, device=ctx.device))


def _matches(name: str, term: str) -> bool:
    """Whether the loss named ``name`` in the config is the term ``term`` (``lpips``, ``lpips_2``, ...)."""
    return name == term or name.startswith(term + "_")


def _image_losses(ctx: StepContext, pred: torch.Tensor, target: torch.Tensor,
                  batch_sum: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The configured weighted losses, with the terms named in ``batch_sum`` summed over the batch (mean × B)."""
    losses = ctx.losses
    total = pred.new_zeros((), dtype=torch.float32)
    parts = {}
    for name, weight, term in zip(losses.names, losses.weights, losses.terms):
        value = term(pred, target)
        parts[name] = value.detach()
        if any(_matches(name, t) for t in batch_sum):
            value = value * pred.shape[0]
        total = total + weight * value
    return total, parts


def _restoration_sample(ctx: StepContext, batch: dict) -> dict:
    lq, size = batch["lq"], batch["hq"].shape[-1]
    codes, feats = _prompts(ctx, lq)
    restored = ctx.models["restorer"](lq, feats, codes, _random_styles(ctx, lq.shape[0]), generator=ctx.generator)
    prior = ctx.models["decoder"](codes, generator=ctx.generator, return_image=True).image
    return {"degraded": lq, "prior": F.adaptive_avg_pool2d(prior, size), "restored": restored, "target": batch["hq"]}


@register_stage(
    "vspbfr_restoration", options=RestorationOptions,
    models=("restorer", "discriminator", "encoder", "decoder", "diffuser"), trainable=("restorer", "discriminator"),
    export="restorer", sample=_restoration_sample, setup=_restoration_setup, licence_hint=VSPBFR_LICENCE_HINT,
)
def restoration_step(ctx: StepContext, batch: dict) -> dict:
    """VSPBFR's restoration network: SMART auto-encoder prompted by diffused codes and StyleGAN2 features, vs D.

    As released: the frozen e4e, code diffuser (4 x0 steps from N(0, I)) and StyleGAN2 bank give the codes and
    features of the degraded batch once. D phase: logistic loss on a restoration made without gradient (random
    styles with mixing), then every ``r1_every`` steps the lazy R1 penalty (γ/2)·E‖∇D(y)‖²·r1_every on real faces
    in its own optimiser step. G phase: a new restoration (new styles and noise), the non-saturating loss plus the
    configured image losses (released: LPIPS-VGG summed over the batch × 0.5, identity × 0.1).
    """
    o: RestorationOptions = ctx.options
    g, d = ctx.models["restorer"], ctx.models["discriminator"]
    lq, hq = batch["lq"], batch["hq"]
    b = hq.shape[0]
    codes, feats = _prompts(ctx, lq)
    out: dict[str, torch.Tensor] = {}

    with torch.no_grad():
        fake = g(lq, feats, codes, _random_styles(ctx, b), generator=ctx.generator)
    real_pred, fake_pred = d(hq), d(fake)
    d_loss = F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()
    ctx.backward(d_loss)
    ctx.optimizer_step("discriminator")
    out.update(d_loss=d_loss.detach(), real_score=real_pred.detach().mean(), fake_score=fake_pred.detach().mean())
    if ctx.training and ctx.step % o.r1_every == 0:
        out["r1"] = _lazy_r1(ctx, d, hq, "discriminator")

    restored = g(lq, feats, codes, _random_styles(ctx, b), generator=ctx.generator)
    with ctx.frozen(d):
        adv = F.softplus(-d(restored)).mean()
    image_loss, parts = _image_losses(ctx, restored, hq, o.batch_sum_losses)
    loss = o.adv_weight * adv + image_loss
    ctx.backward(loss)
    return {"loss": loss, "g_adv": adv.detach(), "image_loss": image_loss.detach(), **parts, **out}

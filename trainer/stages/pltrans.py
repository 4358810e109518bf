"""PLTrans's three training stages (``bfr_core/models/pltrans_design.md``, "Training"), and its trainer model type.

1. ``pltrans_dictionary``: the HQ dictionary V (a VQGAN on clean faces), RestoreFormer's recipe: the configured
   reconstruction losses (L1 + LPIPS) + the codebook/commitment loss, and from ``disc_start`` a hinge PatchGAN
   balanced by VQGAN's adaptive weight. Optionally (``restart_every``) dead codes restart on encoder outputs.
2. ``pltrans_regularizer``: R = {E_Q, D_Q, ε_θ} on the frozen dictionary encoder's features of degraded and
   clean faces: L^q_cons + λ·L_KL, then, after ``warmup_steps`` and :meth:`~LatentRegularizer.calibrate_scale`
   on HQ latents, also L_dif (Eq. 2–4, 12). The model is a whole PLTrans started from the stage-1 dictionary,
   so its export is a working restorer (the dictionary's reconstruction of the degraded face) and the
   starting point of stage 3.
3. ``pltrans_restoration``: E, P, the cross-attention and G with the configured L_cons terms (Eq. 10: L1 + VGG
   features) and the log-likelihood GAN (Eq. 11) against a PatchGAN, the query q̂ coming from the
   regularisation chain (no gradient) with n uniform in [50, 400], s = n // 10 and 4 steps per batch; R keeps
   learning its own objective on the current encoder's features (Eq. 12). V stays frozen.

The degradation of Eq. 13 is ``data.degradation: gpen`` (bfr_core.degrade's GPEN preset).

Model type ``pltrans`` (for the configs): :class:`TrainablePLTrans`, a :class:`~bfr_core.models.pltrans.PLTrans`
that can start from a stage-1 dictionary file (``dictionary:`` beside the size fields) and runs the training
passes through ``forward``, so that a DDP-wrapped model synchronises their gradients. Its exports are plain
PLTrans files (architecture ``pltrans``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch

from bfr_core.models import pltrans_losses as L
from bfr_core.models.pltrans import DEFAULT_N, DEFAULT_S, DEFAULT_STEPS, PLTrans, PLTransConfig, draw_noise
from bfr_core.models.vq import nearest_codes
from bfr_core.seeding import derive_seed

from ..config import ConfigError, check
from ..models import ModelType
from ..registry import MODELS
from . import StepContext, register_stage

log = logging.getLogger(__name__)

PLTRANS_LICENCE_HINT = (
    "PLTrans's code here is this project's own (MIT); weights you train with it carry your training data's terms "
    "(FFHQ: CC BY-NC-SA 4.0, non-commercial)."
)


# --------------------------------------------------------------------------------------------- the model type


@dataclass
class PLTransTrainConfig(PLTransConfig):
    """:class:`PLTransConfig` plus the stage-1 dictionary file the model starts from (trainer only)."""

    dictionary: str | None = None  # anything bfr_core.weights.load_model reads; E, P's conv, V and G start from it


class RegularizerPass(NamedTuple):
    """R's losses, and the std of the scaled HQ latents (≈ 1 after calibration; it drifts if E_Q does)."""

    losses: L.RegularizerLosses
    latent_std: torch.Tensor


class TrainablePLTrans(PLTrans):
    """PLTrans for the trainer: optional start from a dictionary, and the training passes inside ``forward``.

    ``forward(x)`` is PLTrans' inference; ``forward(..., train="regularizer" | "restoration")`` runs
    :meth:`regularizer_pass` or :meth:`restoration_pass`.
    """

    def __init__(self, config: PLTransTrainConfig | None = None):
        config = config or PLTransTrainConfig()
        super().__init__(config)
        if config.dictionary:
            from bfr_core.weights import load_model

            vq = load_model(config.dictionary, "vqgan_dictionary", cache=False).model
            self.load_dictionary(vq)
            log.info("PLTrans: E, P's conv, V and G from the dictionary %s", config.dictionary)

    def forward(self, *args, train: str | None = None, **kwargs):
        if train is None:
            return super().forward(*args, **kwargs)
        passes = {"regularizer": self.regularizer_pass, "restoration": self.restoration_pass}
        if train not in passes:
            raise ValueError(f"unknown training pass {train!r}; one of {', '.join(passes)}")
        return passes[train](*args, **kwargs)

    def _require_regularizer(self):
        if self.regularizer is None:
            raise ConfigError("this stage trains the latent regulariser: build the model with use_diffusion: true")
        return self.regularizer

    def regularizer_pass(self, lq: torch.Tensor, hq: torch.Tensor, generator: torch.Generator, kl_weight: float,
                         diffusion: bool) -> RegularizerPass:
        """R's objective on the (frozen, no-gradient) encoder features of ``lq`` and ``hq``; L_dif if ``diffusion``."""
        reg = self._require_regularizer()
        with torch.no_grad():
            q = self.encode(torch.cat([lq, hq])).float()
        return self._regularizer_losses(reg, q, q[lq.shape[0]:], generator, kl_weight, diffusion)

    @staticmethod
    def _regularizer_losses(reg, q: torch.Tensor, q_hq: torch.Tensor, generator: torch.Generator, kl_weight: float,
                            diffusion: bool) -> RegularizerPass:
        with _float32(q):
            losses = L.regularizer_losses(reg, q, generator, q_hq=q_hq if diffusion else None, kl_weight=kl_weight)
            with torch.no_grad():
                std = (reg.moments(q_hq.detach())[0].float() * reg.latent_scale.float()).std()
        return RegularizerPass(losses, std)

    def restoration_pass(self, lq: torch.Tensor, hq: torch.Tensor, generator: torch.Generator, n: int, s: int,
                         steps: int, kl_weight: float, regularize: bool, code: bool = False
                         ) -> tuple[L.RestorationOutputs, RegularizerPass | None, L.CodeLoss | None]:
        """The restoration network's pass; if ``regularize``, R's objective with L_dif on the current encoder's
        features (all detached); if ``code``, :func:`~bfr_core.models.pltrans_losses.code_loss`.

        The pass is :func:`~bfr_core.models.pltrans_losses.restoration_forward` (E, P, cross-attention and G with
        gradients, the query chain without), except that the chain runs in float32 under mixed precision, as the
        pipeline runs it (the DWT injection must stay exact).
        """
        q = self.encode(lq)
        if self.regularizer is None:  # w/o DIFF: the query is q itself, with its gradient
            q_hat = q
        else:
            with torch.no_grad(), _float32(q):
                q_hat = self.query(q.detach().float(), n, s, steps, generator)
        prior = self.key_value(q)
        out = L.RestorationOutputs(self.decode(self.transform(q_hat.to(q.dtype), prior.key_value)), q, q_hat, prior)
        regularize = regularize and self.regularizer is not None
        if not (regularize or code):
            return out, None, None
        with torch.no_grad():
            q_hq = self.encode(hq).float()
        reg = code_loss = None
        if regularize:
            q = torch.cat([out.q.detach().float(), q_hq])
            reg = self._regularizer_losses(self.regularizer, q, q_hq, generator, kl_weight, True)
        if code:
            code_loss = L.code_loss(self, prior, q_hq)
        return out, reg, code_loss

    @torch.no_grad()
    def calibrate(self, hq: torch.Tensor, generator: torch.Generator) -> float:
        """Set ``latent_scale`` from sampled HQ latents of this batch (LDM's rule: 1 / std; averaged over processes)."""
        reg = self._require_regularizer()
        mean, logvar = reg.moments(self.encode(hq).float())
        u = reg.sample_latent(mean, logvar, draw_noise(generator, mean.shape, mean.device))
        var = u.float().var()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(var)
            var = var / torch.distributed.get_world_size()
        reg.latent_scale.fill_(1.0 / var.sqrt().clamp_min(1e-8))
        return float(reg.latent_scale)

    @torch.no_grad()
    def dictionary_image(self, q: torch.Tensor) -> torch.Tensor:
        """Features q decoded the dictionary's way (P's conv, nearest code of V, G): what a query "looks like"."""
        z = self.prior.conv(q)
        if self.prior.codebook is None:
            return self.decode(z)
        idx = nearest_codes(z.permute(0, 2, 3, 1), self.prior.codebook, 1)[1][..., 0]
        return self.decode(self.prior.codebook[idx].permute(0, 3, 1, 2).to(z.dtype))


def _float32(like: torch.Tensor):
    """Autocast off (the regulariser runs in float32 whatever the mixed precision)."""
    return torch.autocast(like.device.type, enabled=False)


MODELS.register("pltrans", ModelType("trainer.stages.pltrans", "TrainablePLTrans", "PLTransTrainConfig", "pltrans"))


# ------------------------------------------------------------------------------------------- stage 1: V


@dataclass
class DictionaryOptions:
    """RestoreFormer's HQ-dictionary loss settings (besides the configured reconstruction losses)."""

    codebook_weight: float = 1.0
    disc_start: int = 30_001  # steps before the GAN starts (the discriminator does not train before)
    disc_weight: float = 0.8  # × the adaptive weight ‖∇L_rec‖/‖∇L_G‖ at the decoder's last layer
    adaptive_weight: bool = True
    restart_every: int = 0  # every N steps (from step 0), codes unused by the batch move onto its encoder outputs
    restart_until: int = 0  # … until this step (restarts late in a run would undo what the decoder learnt)

    def __post_init__(self) -> None:
        check(self.codebook_weight >= 0 and self.disc_weight >= 0 and self.disc_start >= 0,
              "stage_options: codebook_weight, disc_weight and disc_start must be ≥ 0")
        check(self.restart_every >= 0 and self.restart_until >= 0,
              "stage_options: restart_every and restart_until must be ≥ 0")


def _restart_dead_codes(ctx: StepContext, hq: torch.Tensor) -> torch.Tensor:
    """Dead-code restart of the dictionary (VectorQuantizer.restart_unused) on this step's batch.

    A code counts as used if any process's batch uses it; the main process draws the new codes and every
    process takes them, so the codebook stays identical everywhere. Depends only on the step's batch and
    weights, so a resumed run restarts exactly as an unbroken one.
    """
    vq = ctx.unwrap("dictionary")
    with torch.no_grad():
        z = vq.quant_conv(vq.encoder(hq)).float()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    used = vq.quantize.used_codes(z)
    if distributed:
        counts = used.float()
        torch.distributed.all_reduce(counts)
        used = counts > 0
    dead = vq.quantize.restart_unused(z, ctx.generator, used)
    if distributed:
        torch.distributed.broadcast(vq.quantize.embedding.weight.data, 0)
    return torch.tensor(float(len(dead)), device=ctx.device)


def _gan_weight(ctx: StepContext, rec: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                weight: float, adaptive: bool) -> torch.Tensor:
    """``weight`` × VQGAN's adaptive balance (only when training: it needs gradients), else ``weight``."""
    if adaptive and ctx.training:
        return weight * L.adaptive_gan_weight(rec, g_loss, last_layer)
    return rec.new_tensor(weight)


def _dictionary_sample(ctx: StepContext, batch: dict) -> dict:
    return {"target": batch["hq"], "restored": ctx.models["dictionary"](batch["hq"]).reconstruction}


@register_stage(
    "pltrans_dictionary", options=DictionaryOptions, models=("dictionary", "discriminator"), export="dictionary",
    sample=_dictionary_sample, needs_lq=False, licence_hint=PLTRANS_LICENCE_HINT,
)
def dictionary_step(ctx: StepContext, batch: dict) -> dict:
    """PLTrans stage 1: the HQ dictionary V (VQGAN on clean faces, RestoreFormer's recipe).

    ``loss`` (logged, and the validation loss) is the reconstruction + codebook objective; from ``disc_start`` the
    hinge PatchGAN is trained first on real vs reconstructed faces, then added to the dictionary's objective with
    ``disc_weight`` × the adaptive weight.
    """
    o: DictionaryOptions = ctx.options
    vq, d = ctx.models["dictionary"], ctx.models["discriminator"]
    hq = batch["hq"]
    logs: dict[str, torch.Tensor] = {}
    if o.restart_every:  # logged on every step (0 on most), so the log shows codes restarted per step
        restart = (ctx.training and ctx.step < o.restart_until and ctx.step % o.restart_every == 0
                   and ctx.micro % ctx.accum == 0)
        logs["restarted_codes"] = _restart_dead_codes(ctx, hq) if restart else torch.zeros((), device=ctx.device)
    out = vq(hq)
    rec, parts = ctx.losses(out.reconstruction, hq)
    loss = rec + o.codebook_weight * out.codebook_loss.float()
    total = loss
    if ctx.step >= o.disc_start:
        d_loss = L.hinge_discriminator_loss(d(hq), d(out.reconstruction.detach()))
        ctx.backward(d_loss)
        ctx.optimizer_step("discriminator")
        with ctx.frozen(d):
            g_loss = L.hinge_generator_loss(d(out.reconstruction))
        weight = _gan_weight(ctx, rec, g_loss, ctx.unwrap("dictionary").last_layer, o.disc_weight, o.adaptive_weight)
        total = loss + weight * g_loss
        logs.update(d_loss=d_loss.detach(), g_loss=g_loss.detach(), gan_weight=weight.detach())
    ctx.backward(total)
    return {"loss": loss.detach(), "codebook": out.codebook_loss.detach(), **parts, **logs}


# ------------------------------------------------------------------------------------------- stage 2: R


@dataclass
class RegularizerOptions:
    kl_weight: float = L.KL_WEIGHT  # λ of Eq. 12
    warmup_steps: int = 5_000  # E_Q/D_Q alone; then latent_scale is calibrated on a batch and L_dif starts
    sample_n: int = DEFAULT_N  # the chain of sample grids and validation (q̂ of the degraded faces)
    sample_s: int = DEFAULT_S
    sample_steps: int = DEFAULT_STEPS

    def __post_init__(self) -> None:
        check(self.kl_weight >= 0 and self.warmup_steps >= 0, "stage_options: kl_weight and warmup_steps must be ≥ 0")


def _check_regularizer(ctx: StepContext, slot: str) -> None:
    model = ctx.unwrap(slot)
    if model.regularizer is None:
        raise ConfigError(f"models.{slot}: this stage trains the latent regulariser; set use_diffusion: true")
    o = ctx.options
    model.regularizer.levels(o.sample_n, o.sample_s, o.sample_steps)  # the sampling chain fits the schedule


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).flatten(1).pow(2).mean(1).sqrt().mean()


def _regularizer_setup(ctx: StepContext) -> dict:
    _check_regularizer(ctx, "model")
    # The training model's latent_scale (the tensor itself: a resume loads into it), see _sync_latent_scale.
    return {"latent_scale": ctx.unwrap("model").regularizer.latent_scale}


def _sync_latent_scale(ctx: StepContext, model: PLTrans) -> None:
    """Give the evaluated (EMA) model the calibrated ``latent_scale`` of the trained one.

    latent_scale is a constant set once, at the end of the warm-up; the EMA, which averages floating-point
    buffers too, would otherwise lag behind it for thousands of steps (the configs start the EMA after the
    warm-up, so normally there is nothing to do). Runs before every sample grid and validation, and so before
    every export.
    """
    trained = ctx.state["latent_scale"]
    own = model.regularizer.latent_scale
    if own is not trained and not torch.equal(own, trained):
        log.warning("the EMA's latent_scale (%.4g) differs from the calibrated %.4g: copying it (set ema.start_step "
                    "above stage_options.warmup_steps to avoid this)", float(own), float(trained))
        own.copy_(trained)


def _regularizer_sample(ctx: StepContext, batch: dict) -> dict:
    o: RegularizerOptions = ctx.options
    m = ctx.models["model"]
    _sync_latent_scale(ctx, m)
    q_lq, q_hq = m.encode(batch["lq"]), m.encode(batch["hq"])
    q_hat = m.query(q_lq.float(), o.sample_n, o.sample_s, o.sample_steps, ctx.generator)
    return {"degraded": batch["lq"], "dictionary_lq": m.dictionary_image(q_lq), "restored": m.dictionary_image(q_hat),
            "dictionary_hq": m.dictionary_image(q_hq), "target": batch["hq"]}


@register_stage(
    "pltrans_regularizer", options=RegularizerOptions, models=("model",), sample=_regularizer_sample,
    setup=_regularizer_setup, uses_losses=False, licence_hint=PLTRANS_LICENCE_HINT,
)
def regularizer_step(ctx: StepContext, batch: dict) -> dict:
    """PLTrans stage 2: the latent regulariser R = {E_Q, D_Q, ε_θ} on the dictionary encoder's features.

    Fixed objective L^q_cons + λ·L_KL (E_Q/D_Q auto-encode LQ and HQ features), plus L_dif on scaled HQ latents
    from ``warmup_steps`` on; at that step ``latent_scale`` is set to 1/std of the batch's sampled HQ latents.
    Only R receives gradients (the encoder runs without them). The sample grid shows what the queries look like
    through the dictionary: degraded | q_lq | q̂_lq ("restored") | q_hq | clean; validation adds the feature
    distances ‖q̂_lq − q_hq‖ and ‖q_lq − q_hq‖ (RMS, as the diagnostics).
    """
    o: RegularizerOptions = ctx.options
    m = ctx.models["model"]
    lq, hq = batch["lq"], batch["hq"]
    if not ctx.training:
        _sync_latent_scale(ctx, m)
    if ctx.training and ctx.micro == o.warmup_steps * ctx.accum:
        scale = ctx.unwrap("model").calibrate(hq, ctx.generator)
        log.info("step %d: latent_scale calibrated to %.4g on HQ latents; the diffusion loss starts", ctx.step, scale)
    diffusion = ctx.step >= o.warmup_steps
    reg, latent_std = m(lq, hq, ctx.generator, o.kl_weight, diffusion, train="regularizer")
    ctx.backward(reg.total)
    out = {"loss": reg.total, "cons": reg.cons.detach(), "kl": reg.kl.detach(), "dif": reg.dif.detach(),
           "latent_std": latent_std}
    if not ctx.training:  # the quantity the paper's Fig. 4 plots, at the sampling chain
        q_lq, q_hq = m.encode(lq).float(), m.encode(hq).float()
        q_hat = m.query(q_lq, o.sample_n, o.sample_s, o.sample_steps, ctx.generator)
        out.update(dist_regularised=_rms(q_hat, q_hq), dist_degraded=_rms(q_lq, q_hq))
    return out


# ---------------------------------------------------------------------------------------- stage 3: restoration


@dataclass
class RestorationOptions:
    """The design note's settings for the restoration stage (the paper gives none of these numbers)."""

    n_min: int = 50  # n per batch uniform in [n_min, n_max], s = n // s_divisor, `steps` reverse steps
    n_max: int = 400
    s_divisor: int = 10
    steps: int = 4
    adv_weight: float = 0.8  # × the adaptive weight (RestoreFormer's restoration stage), or alone
    adaptive_adv_weight: bool = True
    disc_start: int = 10_001  # RestoreFormer's restoration stage
    kl_weight: float = L.KL_WEIGHT
    regularizer_losses: bool = True  # keep training R on its own objective (Eq. 12 optimises all three together)
    code_weight: float = 0.0  # weight of pltrans_losses.code_loss (not in Eq. 12; see the design note)
    sample_n: int = DEFAULT_N  # the chain of sample grids and validation
    sample_s: int = DEFAULT_S
    sample_steps: int = DEFAULT_STEPS

    def __post_init__(self) -> None:
        check(1 <= self.n_min <= self.n_max, "stage_options: need 1 ≤ n_min ≤ n_max")
        check(self.s_divisor >= 1 and self.steps >= 1, "stage_options: s_divisor and steps must be ≥ 1")
        check(self.adv_weight >= 0 and self.disc_start >= 0 and self.kl_weight >= 0 and self.code_weight >= 0,
              "stage_options: adv_weight, disc_start, kl_weight and code_weight must be ≥ 0")


def chain_for_batch(options: RestorationOptions, seed: int, micro: int) -> tuple[int, int, int]:
    """(n, s, steps) of one micro-batch: n uniform in [n_min, n_max], s = n // s_divisor, min(steps, n − s).

    Drawn on the host from (seed, micro-batch), so choosing it never waits for the device and a resumed run
    draws the same chains.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, f"pltrans-chain/{micro}"))
    n = int(torch.randint(options.n_min, options.n_max + 1, (1,), generator=gen))
    s = n // options.s_divisor
    return n, s, max(1, min(options.steps, n - s))


def _restoration_setup(ctx: StepContext) -> None:
    model, o = ctx.unwrap("restorer"), ctx.options
    if o.code_weight and model.prior.codebook is None:
        raise ConfigError("stage_options.code_weight pulls P's features onto the dictionary's codes; the model has "
                          "no dictionary (use_dictionary: false): set code_weight: 0")
    if model.regularizer is not None:
        model.regularizer.levels(o.n_max, o.n_max // o.s_divisor, None)
        model.regularizer.levels(o.sample_n, o.sample_s, o.sample_steps)
        if float(model.regularizer.latent_scale) == 1.0:
            log.warning("models.restorer: latent_scale is 1 — start stage 3 from a stage-2 export (init: ...)")


def _restoration_sample(ctx: StepContext, batch: dict) -> dict:
    o: RestorationOptions = ctx.options
    restored = ctx.models["restorer"](batch["lq"], o.sample_n, o.sample_s, o.sample_steps, generator=ctx.generator)
    return {"degraded": batch["lq"], "restored": restored, "target": batch["hq"]}


@register_stage(
    "pltrans_restoration", options=RestorationOptions, models=("restorer", "discriminator"), export="restorer",
    sample=_restoration_sample, setup=_restoration_setup, licence_hint=PLTRANS_LICENCE_HINT,
)
def restoration_step(ctx: StepContext, batch: dict) -> dict:
    """PLTrans stage 3: the restoration network (E, P, cross-attention, G) with L_cons + L_adv, and R on its own.

    ``loss`` is the configured L_cons (Eq. 10; e.g. L1 + VGG features). From ``disc_start`` the PatchGAN learns
    −log D(y) − log(1 − D(ŷ)) first, then the network adds −log D(ŷ) × ``adv_weight`` (× the adaptive weight).
    R's objective (L^q_cons + λ L_KL + L_dif, detached features) is added to the backward pass; its gradients
    reach only R. With ``code_weight`` > 0, the code loss (P's features of the degraded face onto the HQ face's
    codes) is added, and ``code_hits`` logs how often the nearest code already is the HQ face's. Validation uses
    the sampling chain (``sample_n``, ``sample_s``, ``sample_steps``).
    """
    o: RestorationOptions = ctx.options
    m, d = ctx.models["restorer"], ctx.models["discriminator"]
    lq, hq = batch["lq"], batch["hq"]
    if ctx.training:
        n, s, steps = chain_for_batch(o, ctx.seed, ctx.micro)
    else:
        n, s, steps = o.sample_n, o.sample_s, o.sample_steps
    out, reg, code = m(lq, hq, ctx.generator, n, s, steps, o.kl_weight, o.regularizer_losses, o.code_weight > 0,
                       train="restoration")
    restored = out.restored
    cons, parts = ctx.losses(restored, hq)
    total = cons
    logs: dict[str, torch.Tensor] = {}
    if ctx.step >= o.disc_start:
        d_loss = L.discriminator_adversarial_loss(d(hq), d(restored.detach()))
        ctx.backward(d_loss)
        ctx.optimizer_step("discriminator")
        with ctx.frozen(d):
            g_loss = L.generator_adversarial_loss(d(restored))
        last = ctx.unwrap("restorer").decoder.conv_out.weight
        weight = _gan_weight(ctx, cons, g_loss, last, o.adv_weight, o.adaptive_adv_weight)
        total = total + weight * g_loss
        logs.update(d_loss=d_loss.detach(), g_adv=g_loss.detach(), adv_weight=weight.detach())
    if code is not None:
        total = total + o.code_weight * code.loss
        logs.update(code=code.loss.detach(), code_hits=code.hit_rate)
    if reg is not None:
        total = total + reg.losses.total
        logs.update(reg_cons=reg.losses.cons.detach(), reg_kl=reg.losses.kl.detach(), reg_dif=reg.losses.dif.detach(),
                    latent_std=reg.latent_std)
    prior = ctx.unwrap("restorer").prior
    if prior.codebook is not None:
        logs.update(r_first=prior.r[0].detach().float(), r_rest=prior.r[1:].detach().float().norm())
    ctx.backward(total)
    return {"loss": cons.detach(), **parts, **logs, "n": torch.tensor(float(n), device=ctx.device)}

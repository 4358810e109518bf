"""PLTrans training objectives as plain functions (the trainer owns optimisers, VGG/LPIPS networks and schedules).

Paper equations and how they are reduced here:

* Eq. 2, L_KL = KL(N(μ, σ²) ‖ N(0, I)): summed over a sample's latent, averaged over the batch.
* Eq. 3, L^q_cons = E‖D_Q(u) − q‖₁: summed over a sample's features, averaged over the batch. With both in
  this per-sample-sum form, λ = 5e-5 weighs them as in LDM's KL autoencoders (which use the same form).
* Eq. 4, L_dif = E‖ε − ε_θ(√ᾱ_t u₀ + √(1 − ᾱ_t) ε, t)‖²: mean over elements (DDPM's "simple" loss); it is the
  only loss of ε_θ, so its scale does not trade off against anything.
* Eq. 10, L_cons = E[‖ŷ − y‖₁ + ‖φ(ŷ) − φ(y)‖²₂]: means over elements, φ supplied by the trainer.
* Eq. 11, log-likelihood GAN: the discriminator minimises −log D(y) − log(1 − D(ŷ)); the restoration network the
  non-saturating −log D(ŷ) (same fixed point as the paper's log(1 − D(ŷ)), usable gradients early on).
* Eq. 12, gradient routing: R = {E_Q, D_Q, ε_θ} learns only from L^q_cons + λL_KL + L_dif, on detached encoder
  features; E, P, the cross-attention and G learn from L_cons + L_adv with the query q̂ computed without
  gradient (:func:`restoration_forward`).
* Not in the paper: :func:`code_loss`, an optional anchor of P's features to the HQ face's codes (the design
  note's "Training" section says why).

Stage 1 (the HQ dictionary V, RestoreFormer's recipe): :func:`dictionary_losses`, :func:`adaptive_gan_weight`,
the hinge GAN pair.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .pltrans import PLTrans, LatentRegularizer, PriorOutput, draw_noise
from .vq import VQOutput, nearest_codes

__all__ = [
    "KL_WEIGHT", "kl_loss", "q_consistency_loss", "diffusion_loss", "RegularizerLosses", "regularizer_losses",
    "RestorationOutputs", "restoration_forward", "CodeLoss", "code_loss", "consistency_loss", "generator_adversarial_loss",
    "discriminator_adversarial_loss", "dictionary_losses", "adaptive_gan_weight", "hinge_generator_loss",
    "hinge_discriminator_loss",
]

#: λ of Eq. 12 (paper Sec. 4.1.3).
KL_WEIGHT = 5e-5

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]
PairFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# -- the latent regulariser (Eq. 2–4) -----------------------------------------------------------------------------


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ½ Σ(μ² + σ² − 1 − log σ²) over each sample's latent, averaged over the batch."""
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())
    return kl.flatten(1).sum(1).mean()


def q_consistency_loss(q_rec: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ‖q̂ − q‖₁ per sample (q is the target and is detached), averaged over the batch."""
    return (q_rec.float() - q.detach().float()).abs().flatten(1).sum(1).mean()


def diffusion_loss(regularizer: LatentRegularizer, u0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Eq. 4 on clean (scaled) latents ``u0`` (detached): t uniform in 1…T, ε ~ N(0, I), both from ``generator``."""
    u0 = u0.detach().float()
    level = torch.randint(1, regularizer.timesteps + 1, (u0.shape[0],), generator=generator,
                          device=generator.device).to(u0.device)
    noise = draw_noise(generator, u0.shape, u0.device)
    pred = regularizer.predict_eps(regularizer.perturb(u0, level, noise), level)
    return F.mse_loss(pred.float(), noise)


class RegularizerLosses(NamedTuple):
    """``total`` = cons + λ·kl + dif, and the three terms (dif is 0 when no HQ features were given)."""

    total: torch.Tensor
    cons: torch.Tensor
    kl: torch.Tensor
    dif: torch.Tensor


def regularizer_losses(regularizer: LatentRegularizer, q: torch.Tensor, generator: torch.Generator,
                       q_hq: torch.Tensor | None = None, kl_weight: float = KL_WEIGHT) -> RegularizerLosses:
    """min_R L^q_cons + λ L_KL + L_dif (Eq. 12, first line), with every encoder feature detached.

    ``q``: the features E_Q/D_Q learn to auto-encode; pass both LQ and HQ features (concatenated on the batch)
    so that E_Q also sees what it gets at inference. ``q_hq``: HQ features whose latents (sampled, scaled by
    ``latent_scale``, detached) train ε_θ. Draw order from ``generator``: u's noise, then (with ``q_hq``) the
    HQ latent's noise, t and ε.
    """
    mean, logvar = regularizer.moments(q.detach())
    u = regularizer.sample_latent(mean, logvar, draw_noise(generator, mean.shape, mean.device))
    cons = q_consistency_loss(regularizer.decode(u), q)
    kl = kl_loss(mean, logvar)
    dif = cons.new_zeros(())
    if q_hq is not None:
        with torch.no_grad():
            m_hq, lv_hq = regularizer.moments(q_hq.detach())
            u_hq = regularizer.sample_latent(m_hq, lv_hq, draw_noise(generator, m_hq.shape, m_hq.device))
        dif = diffusion_loss(regularizer, u_hq * regularizer.latent_scale.float(), generator)
    return RegularizerLosses(cons + kl_weight * kl + dif, cons, kl, dif)


# -- restoration (Eq. 10–12) --------------------------------------------------------------------------------------


class RestorationOutputs(NamedTuple):
    """A training pass: the restored faces, q (with gradient), q̂ (without) and P's outputs."""

    restored: torch.Tensor
    q: torch.Tensor
    q_hat: torch.Tensor
    prior: PriorOutput


def restoration_forward(model: PLTrans, lq: torch.Tensor, generator: torch.Generator | None, n: int, s: int,
                        steps: int | None) -> RestorationOutputs:
    """The restoration network's training pass: gradients reach E (through P), P, the cross-attention and G.

    The query runs the same regularisation chain as inference (n, s, steps), without gradient: Eq. 12 keeps R
    out of the restoration objective, and backpropagating through the chain would cost a UNet backward per step.
    Without the regulariser (w/o DIFF) the query is q with its gradient.
    """
    q = model.encode(lq)
    if model.regularizer is None:  # w/o DIFF: the query is q itself, trained like RestoreFormer's
        q_hat = q
    else:
        with torch.no_grad():
            q_hat = model.query(q.detach(), n, s, steps, generator)
    prior = model.key_value(q)
    restored = model.decode(model.transform(q_hat, prior.key_value))
    return RestorationOutputs(restored, q, q_hat, prior)


class CodeLoss(NamedTuple):
    """:func:`code_loss`'s value and the share of positions whose nearest code is already the HQ face's."""

    loss: torch.Tensor
    hit_rate: torch.Tensor


def code_loss(model: PLTrans, prior: PriorOutput, q_hq: torch.Tensor) -> CodeLoss:
    """mean (z − sg(e_hq))²: P's features of the degraded face pulled onto the codes the HQ face retrieves.

    e_hq is the entry of V nearest to P's features of the HQ face (``q_hq`` = E(y), run without gradient).
    Retrieval (Eq. 5) is not differentiable, so nothing else in Eq. 12 keeps z near V while E and P train; this
    is RestoreFormer's commitment term with CodeFormer's target (the HQ face's codes instead of the nearest).
    """
    if model.prior.codebook is None:
        raise ValueError("the code loss needs the dictionary V (use_dictionary: true)")
    with torch.no_grad():
        z_hq = model.prior.features(q_hq)
        idx = nearest_codes(z_hq.permute(0, 2, 3, 1), model.prior.codebook, 1)[1][..., 0]
        target = model.prior.codebook[idx].permute(0, 3, 1, 2)
        hits = (prior.indices[..., 0] == idx).float().mean()
    return CodeLoss(F.mse_loss(prior.z.float(), target.float()), hits)


def consistency_loss(restored: torch.Tensor, target: torch.Tensor, features: FeatureFn | None = None,
                     feature_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 10 → (total, L1 term, feature term): mean |ŷ − y| + weight · Σ_layers mean (φ(ŷ) − φ(y))².

    ``features`` maps images in [-1, 1] to a list of feature maps (the trainer's VGG); without it the feature
    term is 0. The target's features are computed without gradient.
    """
    l1 = F.l1_loss(restored.float(), target.float())
    feat = l1.new_zeros(())
    if features is not None:
        with torch.no_grad():
            want = [f.detach() for f in features(target)]
        got = features(restored)
        feat = sum((F.mse_loss(a.float(), b.float()) for a, b in zip(got, want)), feat)
    return l1 + feature_weight * feat, l1, feat


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 11 for E, P, G (non-saturating form): −log D(ŷ) = softplus(−logit), mean over batch and patches."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 11 for D: −log D(y) − log(1 − D(ŷ)) = softplus(−real) + softplus(fake), means."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


# -- stage 1: the HQ dictionary -----------------------------------------------------------------------------------


def dictionary_losses(out: VQOutput, target: torch.Tensor, perceptual: PairFn | None = None,
                      perceptual_weight: float = 1.0, codebook_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """RestoreFormer's dictionary objective without the GAN → (total, reconstruction term).

    Reconstruction = mean |x̂ − x| + weight · perceptual(x̂, x) (the trainer's LPIPS, mean over the batch);
    total = reconstruction + codebook_weight · (codebook + commitment loss). The reconstruction term is what
    :func:`adaptive_gan_weight` balances the GAN against.
    """
    rec = F.l1_loss(out.reconstruction.float(), target.float())
    if perceptual is not None:
        rec = rec + perceptual_weight * perceptual(out.reconstruction, target).float().mean()
    return rec + codebook_weight * out.codebook_loss.float(), rec


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance ‖∇_w L_rec‖ / (‖∇_w L_G‖ + 1e-4) at the decoder's last layer w, clamped, detached.

    Multiply by the disc weight (0.8 in RestoreFormer) and the generator's GAN loss. Both losses must still have
    their graphs (this takes two gradients with ``retain_graph``).
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge GAN, generator side: −mean D(x̂)."""
    return -fake_logits.float().mean()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge GAN, discriminator side: ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())

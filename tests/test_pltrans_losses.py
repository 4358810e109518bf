"""PLTrans objectives on known inputs, and which parameters each objective reaches (Eq. 12)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bfr_core.models import pltrans_losses as L
from bfr_core.models.pltrans import PLTrans, draw_noise
from bfr_core.models.vq import VQGAN
from bfr_core.seeding import make_generator

from .pltrans_tiny import tiny_pltrans, tiny_vq


def _grads(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_kl_and_feature_consistency_on_known_inputs():
    zeros = torch.zeros(2, 4, 8, 8)
    assert float(L.kl_loss(zeros, zeros)) == 0.0
    assert math.isclose(float(L.kl_loss(torch.ones(2, 4, 8, 8), zeros)), 0.5 * 256, rel_tol=1e-6)
    expect = 0.5 * (2 - 1 - math.log(2)) * 256
    assert math.isclose(float(L.kl_loss(zeros, torch.full_like(zeros, math.log(2)))), expect, rel_tol=1e-5)
    q = torch.zeros(3, 32, 8, 8)
    assert math.isclose(float(L.q_consistency_loss(q + 0.5, q)), 0.5 * 2048, rel_tol=1e-6)
    q_rec = torch.zeros_like(q, requires_grad=True)
    target = torch.ones_like(q, requires_grad=True)
    L.q_consistency_loss(q_rec, target).backward()
    assert target.grad is None and torch.allclose(q_rec.grad, torch.full_like(q, -1 / 3))


def test_diffusion_loss_draws_from_the_generator_and_trains_only_the_unet():
    torch.manual_seed(0)
    reg = PLTrans(tiny_pltrans()).regularizer
    u0 = torch.randn(3, 4, 8, 8, requires_grad=True)
    loss = L.diffusion_loss(reg, u0, make_generator(4))
    g = make_generator(4)
    level = torch.randint(1, reg.timesteps + 1, (3,), generator=g)
    noise = draw_noise(g, u0.shape, u0.device)
    ab = reg.alpha_bar[level].float().reshape(-1, 1, 1, 1)
    u_t = ab.sqrt() * u0.detach() + (1 - ab).sqrt() * noise
    want = torch.mean((reg.unet(u_t, level - 1) - noise) ** 2)
    assert torch.allclose(loss, want, rtol=1e-5)
    loss.backward()
    assert u0.grad is None and _grads(reg.unet) > 0


def test_regularizer_losses_route_gradients_to_r_only():
    torch.manual_seed(0)
    model = PLTrans(tiny_pltrans())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    q = model.encode(x)
    out = L.regularizer_losses(model.regularizer, q, make_generator(0), q_hq=q)
    assert torch.allclose(out.total, out.cons + L.KL_WEIGHT * out.kl + out.dif)
    assert out.cons > 0 and out.kl > 0 and out.dif > 0
    out.total.backward()
    reg = model.regularizer
    assert _grads(reg.to_latent) > 0 and _grads(reg.from_latent) > 0 and _grads(reg.unet) > 0
    assert _grads(model.encoder) == 0 and _grads(model.prior) == 0 and _grads(model.decoder) == 0
    assert float(L.regularizer_losses(reg, q.detach(), make_generator(0)).dif) == 0.0


def test_restoration_forward_routes_gradients_to_e_p_and_g_only():
    torch.manual_seed(0)
    model = PLTrans(tiny_pltrans())
    with torch.no_grad():  # wake the zero-initialised output layers so every path carries a gradient
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.02 * torch.randn_like(p))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = L.restoration_forward(model, x, make_generator(0), 100, 10, 3)
    assert out.restored.shape == x.shape and not out.q_hat.requires_grad
    total, l1, feat = L.consistency_loss(out.restored, torch.zeros_like(x))
    assert float(feat) == 0.0 and torch.equal(total, l1)
    total.backward()
    assert _grads(model.encoder) > 0 and _grads(model.prior) > 0 and _grads(model.fuse) > 0 and _grads(model.decoder) > 0
    assert model.prior.r.grad.abs().sum() > 0
    assert _grads(model.regularizer) == 0
    # without the regulariser the query is q, with its gradient
    plain = PLTrans(tiny_pltrans(use_diffusion=False))
    assert L.restoration_forward(plain, x, None, 100, 10, 3).q_hat.requires_grad


def test_code_loss_pulls_degraded_features_onto_the_hq_faces_codes():
    """The code loss is the MSE between P's features of the degraded face and the codes the HQ face retrieves;
    its gradient reaches E and P only, and a few steps on it make the degraded face retrieve the HQ face's codes."""
    torch.manual_seed(0)
    model = PLTrans(tiny_pltrans())
    hq = torch.rand(2, 3, 32, 32) * 2 - 1
    lq = (hq + 0.5 * torch.randn_like(hq)).clamp(-1, 1)
    with torch.no_grad():
        q_hq = model.encode(hq)
        z_hq = model.prior(q_hq).z  # P's conv and self-attention do not involve V
        model.prior.codebook.copy_(z_hq.mean() + z_hq.std() * torch.randn_like(model.prior.codebook))
    hq_codes = torch.cdist(z_hq.permute(0, 2, 3, 1).flatten(0, 2), model.prior.codebook).argmin(1)

    # the clean face against itself: its own nearest codes, every position a hit
    same = L.code_loss(model, model.prior(q_hq), q_hq)
    assert float(same.hit_rate) == 1.0
    want = (z_hq.permute(0, 2, 3, 1).flatten(0, 2) - model.prior.codebook[hq_codes]).square().mean()
    assert torch.allclose(same.loss, want, rtol=1e-5)

    out = L.restoration_forward(model, lq, make_generator(0), 100, 10, 3)
    code = L.code_loss(model, out.prior, q_hq)
    target = model.prior.codebook[hq_codes].reshape(2, 8, 8, -1).permute(0, 3, 1, 2)
    assert torch.allclose(code.loss, (out.prior.z - target).square().mean(), rtol=1e-5)
    hits = (out.prior.indices[..., 0].flatten() == hq_codes).float().mean()
    assert float(code.hit_rate) == pytest.approx(float(hits)) and float(hits) < 0.9
    code.loss.backward()
    assert _grads(model.encoder) > 0 and model.prior.conv.weight.grad.abs().sum() > 0
    assert _grads(model.decoder) == 0 and _grads(model.fuse) == 0 and _grads(model.regularizer) == 0

    opt = torch.optim.Adam([*model.encoder.parameters(), *model.prior.parameters()], lr=3e-3)
    first = (float(code.loss.detach()), float(code.hit_rate))
    for _ in range(40):
        opt.zero_grad()
        code = L.code_loss(model, model.key_value(model.encode(lq)), q_hq)
        code.loss.backward()
        opt.step()
    assert float(code.loss) < 0.5 * first[0] and float(code.hit_rate) > first[1] + 0.2, (first, code)

    with pytest.raises(ValueError, match="dictionary"):
        plain = PLTrans(tiny_pltrans(use_dictionary=False))
        L.code_loss(plain, plain.key_value(plain.encode(lq)), plain.encode(hq))


def test_consistency_loss_with_features():
    y = torch.zeros(1, 3, 8, 8)
    y_hat = torch.full_like(y, 0.5)
    feats = lambda im: [im * 2, im.mean(1, keepdim=True)]  # noqa: E731
    total, l1, feat = L.consistency_loss(y_hat, y, feats, feature_weight=0.5)
    assert math.isclose(float(l1), 0.5) and math.isclose(float(feat), 1.0 + 0.25)
    assert math.isclose(float(total), 0.5 + 0.5 * 1.25)


def test_adversarial_losses_on_known_logits():
    zero = torch.zeros(4, 1, 6, 6)
    assert math.isclose(float(L.generator_adversarial_loss(zero)), math.log(2), rel_tol=1e-6)
    assert math.isclose(float(L.discriminator_adversarial_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)
    assert float(L.discriminator_adversarial_loss(zero + 30, zero - 30)) < 1e-10
    assert float(L.generator_adversarial_loss(zero + 30)) < 1e-10
    assert float(L.hinge_discriminator_loss(zero + 2, zero - 2)) == 0.0
    assert float(L.hinge_discriminator_loss(zero, zero)) == 1.0
    assert float(L.hinge_generator_loss(zero + 3)) == -3.0


def test_adaptive_gan_weight_is_the_gradient_norm_ratio():
    w = torch.ones(4, requires_grad=True)
    a, b = torch.tensor([3.0, 0, 4, 0]), torch.tensor([0, 1.0, 0, 0])
    weight = L.adaptive_gan_weight((w * a).sum(), (w * b).sum(), w)
    assert math.isclose(float(weight), 5 / (1 + 1e-4), rel_tol=1e-6) and not weight.requires_grad
    assert float(L.adaptive_gan_weight((w * a).sum() * 1e9, (w * b).sum(), w)) == 1e4


def test_dictionary_losses():
    torch.manual_seed(0)
    model = VQGAN(tiny_vq())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    total, rec = L.dictionary_losses(out, x)
    assert torch.allclose(rec, (out.reconstruction - x).abs().mean())
    assert torch.allclose(total, rec + out.codebook_loss)
    total_p, rec_p = L.dictionary_losses(out, x, perceptual=lambda a, b: torch.full((2,), 0.25), perceptual_weight=2.0)
    assert torch.allclose(rec_p, rec + 0.5)
    with pytest.raises(RuntimeError):  # the adaptive weight needs the graph of both losses
        L.adaptive_gan_weight(rec.detach(), rec, model.last_layer)

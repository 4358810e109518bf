"""PGDiff guidance: each term's loss and gradient, the composite's update rules and windows, and, on real
faces, that each term does its job.

The effect tests need a prior whose samples can be judged exactly, so they use the analytic denoiser of
a Gaussian mixture centred on real faces (``GaussianMixtureEpsModel``): unguided, a sample is one of
those faces at random; guided, it must become the face the guidance describes, and the measured
property (kept pixels, lightness, identity...) must match while the rest comes from the prior.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bfr_core.errors import InputError
from bfr_core.guidance import (
    Adversarial,
    ColorStatistics,
    CompositeGuidance,
    GuidanceContext,
    IdentityReference,
    Lightness,
    Perceptual,
    SmoothSemantics,
    UnmaskedRegion,
    color_stats,
    gray,
    presets,
)
from bfr_core.models.arcface import IResNet, IResNetConfig
from bfr_core.models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig
from bfr_core.sampling import (
    DiffusionSchedule,
    IDDPMDenoiser,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
)
from bfr_core.sampling.analytic import GaussianMixtureEpsModel

from .test_pgdiff_golden import randomize

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def ctx_for(x: torch.Tensor, y: torch.Tensor | None = None, index: int = 5, num_steps: int = 10) -> GuidanceContext:
    return GuidanceContext(y, x, torch.full((x.shape[0],), 500), index, num_steps)


def grad_of(term, x0, ctx):
    x = x0.clone().requires_grad_(True)
    loss = term(x, ctx)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g


def tiny_arcface() -> IResNet:
    return randomize(IResNet(IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_features=64)).eval(), 3)


# ----------------------------------------------------------------------------- terms, by hand
def test_smooth_semantics_gradient_and_targets():
    x0, tgt = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8) * 2 - 1
    term = SmoothSemantics(target=tgt, weight=0.5).bind(x0)
    loss, g = grad_of(term, x0, ctx_for(x0))
    assert loss.item() == pytest.approx(0.5 * ((tgt - x0) ** 2).sum().item(), rel=1e-6)
    torch.testing.assert_close(g, 2 * 0.5 * (x0 - tgt))
    # None → the sampler's input; a restorer is run once per step on (x_t, y, t) and cached across passes
    y = torch.zeros(2, 3, 8, 8)
    _, g_y = grad_of(SmoothSemantics(), x0, ctx_for(x0, y))
    torch.testing.assert_close(g_y, 2 * x0)
    calls = []

    def restorer(x_t, yy, t):
        calls.append(int(t[0]))
        return torch.full_like(x_t, 3.0)  # clamped to 1

    ctx = ctx_for(x0, y)
    for _ in range(3):
        _, g_r = grad_of(SmoothSemantics(target=restorer), x0, ctx)
    assert calls == [500]
    torch.testing.assert_close(g_r, 2 * (x0 - 1))
    with pytest.raises(InputError, match="input image"):
        grad_of(SmoothSemantics(target=restorer), x0, ctx_for(x0))


def test_lightness_matches_channel_mean_and_respects_holes():
    x0, y = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :2, :] = 1
    term = Lightness(mask=mask).bind(x0)
    loss, g = grad_of(term, x0, ctx_for(x0, y))
    keep = (mask == 0).float()
    d = (x0.mean(1, keepdim=True) - y.mean(1, keepdim=True)) * keep
    assert loss.item() == pytest.approx(3 * (d**2).sum().item(), rel=1e-5)  # repeated on three channels
    torch.testing.assert_close(g, (2 * d).expand(-1, 3, -1, -1))
    assert term.hole().sum() == 16
    # a gray image's own lightness is already right: no gradient
    _, g0 = grad_of(Lightness(), gray(y), ctx_for(y, gray(y)))
    assert g0.abs().max() < 1e-6


def test_color_statistics_zero_at_target_and_descends_towards_it():
    g_ = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 16, 16, generator=g_) * 1.2 - 0.7
    mean, std = color_stats(target)
    term = ColorStatistics.from_image(target, weight=1.0).bind(target)
    # statistics from the script use the population variance; the loss uses the unbiased one (as released),
    # so build an image that has the target's unbiased statistics to hit exactly zero
    x = target.clone()
    flat = x.flatten(2)
    x = ((flat - flat.mean(2, keepdim=True)) / (flat.var(2, keepdim=True) + 1e-5).sqrt() * std[..., None] + mean[..., None]).reshape_as(x)
    loss, g = grad_of(term, x, ctx_for(x))
    assert loss.item() < 1e-8 and g.abs().max() < 1e-4
    # from a different image, gradient descent moves the statistics to the target
    x = torch.rand(1, 3, 16, 16, generator=g_) * 0.4
    before = (color_stats(x)[0] - mean).abs().sum() + (color_stats(x)[1] - std).abs().sum()
    for _ in range(100):
        _, g = grad_of(term, x, ctx_for(x))
        x = x - 0.05 * g
    after = (color_stats(x)[0] - mean).abs().sum() + (color_stats(x)[1] - std).abs().sum()
    assert after < 0.1 * before
    # the default target is the CelebA-HQ average
    default = ColorStatistics().bind(x)
    torch.testing.assert_close(default.mean.flatten(), torch.tensor([0.03202754, -0.16308397, -0.26475719]))


def test_unmasked_region_gradient_is_zero_in_holes_and_exact_elsewhere():
    x0, y = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:8, 4:12] = 1  # (B, H, W) at twice the size: resized to the sample
    mask[1, 0, 0] = 0.3  # any non-zero value is a hole (as released)
    term = UnmaskedRegion(mask=mask).bind(x0)
    assert term.mask.shape == (2, 1, 8, 8)
    loss, g = grad_of(term, x0, ctx_for(x0, y))
    keep = (term.mask == 0).float()
    assert keep[0].sum() == 64 - 8 and keep[1].sum() == 64 - 9
    torch.testing.assert_close(g, 2 * (x0 - y) * keep)
    assert loss.item() == pytest.approx((((y - x0) * keep) ** 2).sum().item(), rel=1e-5)


def test_identity_reference_mse_and_cosine():
    torch.manual_seed(0)
    arc = tiny_arcface()
    ref, x0 = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    term = IdentityReference(arcface=arc, reference=ref).bind(x0)
    loss, g = grad_of(term, x0, ctx_for(x0))
    with torch.no_grad():
        e, r = arc.embed(x0), arc.embed(ref)
    assert loss.item() == pytest.approx(25 * ((e - r) ** 2).sum().item(), rel=1e-4)
    assert g.abs().sum() > 0 and g.shape == x0.shape
    cos = IdentityReference(arcface=arc, reference=ref, metric="cosine", weight=1.0).bind(x0)
    loss_c, _ = grad_of(cos, x0, ctx_for(x0))
    assert loss_c.item() == pytest.approx(-F.cosine_similarity(e, r.expand_as(e)).sum().item(), rel=1e-4)
    with pytest.raises(InputError):
        IdentityReference(arcface=arc, reference=ref, metric="l1")


def test_perceptual_and_adversarial_losses():
    torch.manual_seed(0)
    vgg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval()
    tgt, x0 = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    term = Perceptual(vgg=vgg, target=tgt, layers=(1, 6), weight=1.0).bind(x0)
    loss, g = grad_of(term, x0, ctx_for(x0))
    assert loss > 0 and g.abs().sum() > 0
    assert grad_of(term, tgt, ctx_for(tgt))[0].item() == pytest.approx(0.0, abs=1e-6)
    disc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1)).eval()
    adv = Adversarial(discriminator=disc, weight=1.0).bind(x0)
    loss, g = grad_of(adv, x0, ctx_for(x0))
    assert loss.item() == pytest.approx(F.softplus(-disc(x0)).sum().item(), rel=1e-5)
    with torch.no_grad():
        assert disc(x0 - 0.1 * g) > disc(x0)  # descending the loss raises the realness logit


def test_adversarial_with_the_stylegan2_discriminator_is_per_image():
    from bfr_core.models.vspbfr_discriminator import Discriminator, DiscriminatorConfig

    torch.manual_seed(0)
    disc = randomize(Discriminator(DiscriminatorConfig(size=16, channel_max=16)).eval(), 5)
    x0 = torch.rand(3, 3, 32, 32) * 2 - 1  # resized to the discriminator's 16 px; a batch of 3 is not a stddev group
    term = Adversarial(discriminator=disc, weight=1.0).bind(x0)
    _, g = grad_of(term, x0, ctx_for(x0))
    _, g1 = grad_of(term, x0[1:2], ctx_for(x0[1:2]))
    torch.testing.assert_close(g[1:2], g1)  # the other images do not change this one's gradient
    assert g.abs().sum() > 0


# ----------------------------------------------------------------------------- the composite
def _bound(terms, **kw):
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    y = torch.rand(2, 3, 8, 8) * 2 - 1
    return CompositeGuidance(tuple(terms), **kw).bind(y, x), x, y


def test_classic_update_is_mean_minus_s_sigma_g():
    bound, x, _ = _bound([SmoothSemantics()], scale=0.3)
    mean, noise, var, grad = torch.randn(4, 2, 3, 8, 8).unbind(0)
    out = bound.apply(x, mean, noise, var.abs(), grad)
    torch.testing.assert_close(out, mean - 0.3 * var.abs() * grad + noise)


@pytest.mark.parametrize("norm", ["global", "channel"])
def test_dynamic_update_scales_the_step_per_image(norm):
    bound, x, _ = _bound([SmoothSemantics()], scale=0.2, update="dynamic", norm=norm)
    mean, noise, var, grad = torch.randn(4, 2, 3, 8, 8).unbind(0)
    grad[1] *= 100  # another image's gradient size must not matter
    out = bound.apply(x, mean, noise, var, grad)
    proposal = mean + noise
    dims = (2, 3) if norm == "channel" else (1, 2, 3)
    moved = torch.linalg.vector_norm(out - proposal, dim=dims)
    step = torch.linalg.vector_norm(x - proposal, dim=dims)
    torch.testing.assert_close(moved, 0.2 * step)
    cos = F.cosine_similarity((proposal - out).flatten(2 if norm == "channel" else 1), grad.flatten(2 if norm == "channel" else 1), dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))  # along −g (per channel with channel norms)
    # a zero gradient leaves the proposal unchanged (the released code would divide by zero)
    torch.testing.assert_close(bound.apply(x, mean, noise, var, torch.zeros_like(grad)), proposal)


def test_gradient_sums_active_terms_and_zeroes_holes():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    bound, x, y = _bound([SmoothSemantics(weight=2.0, start=1.0, stop=0.5), UnmaskedRegion(mask=mask, weight=1.0)])
    early, late = ctx_for(x, bound.y, index=8), ctx_for(x, bound.y, index=2)
    keep = (mask == 0).float()
    torch.testing.assert_close(bound.gradient(x, early), (2 * 2.0 * (x - y) + 2 * (x - y) * keep) * keep)
    torch.testing.assert_close(bound.gradient(x, late), 2 * (x - y) * keep)
    assert set(early.losses) == {"smooth_semantics", "unmasked_region"}
    off, _, _ = _bound([SmoothSemantics(start=0.3, stop=0.1)])
    assert off.gradient(x, ctx_for(x, y, index=8)) is None


def test_windows_and_passes_follow_the_released_rule_at_1000_steps_and_scale_with_respacing():
    term = SmoothSemantics(n_steps=3)
    bound = CompositeGuidance((term,), repeat_start=1.0, repeat_stop=0.7).bind(None, torch.zeros(1, 3, 8, 8))
    passes = [bound.passes(i, 1000) for i in range(1000)]
    assert [i for i, p in enumerate(passes) if p == 3] == list(range(701, 1000))  # 700 < t < 1000, as released
    assert [i for i in range(100) if bound.passes(i, 100) == 3] == list(range(71, 100))  # never reached in the release
    assert [i for i in range(100) if SmoothSemantics(start=0.5, stop=0.2).active(i, 100)] == list(range(20, 50))
    assert all(SmoothSemantics().active(i, 7) for i in range(7))
    with pytest.raises(InputError):
        SmoothSemantics(start=0.2, stop=0.5)
    with pytest.raises(InputError):
        CompositeGuidance((term,), update="fancy")


def test_multi_step_passes_rerun_the_step_and_reuse_the_restorer():
    calls, unet_calls = [], []

    def restorer(x_t, y, t):
        calls.append(int(t[0]))
        return y

    class Prior(nn.Module):
        def __init__(self):
            super().__init__()
            self.gmm = GaussianMixtureEpsModel(torch.zeros(1, 3, 8, 8), std=0.5)

        def forward(self, x, t):
            unet_calls.append(int(t[0]))
            return self.gmm(x, t)

    sched = DiffusionSchedule.linear().respace(space_timesteps(1000, "ddpm10"))
    x = torch.randn(1, 3, 8, 8)
    y = torch.rand(1, 3, 8, 8)
    g = presets.restoration(restorer, n_steps=2).bind(y, x)
    sample_ddpm(IDDPMDenoiser(Prior()), x, sched, guidance=g, generator=torch.Generator().manual_seed(0))
    assert calls == list(range(900, -1, -100))  # once per step, original-scale t
    assert unet_calls == [900, 900, 800, 800] + list(range(700, -1, -100))  # indices 9 and 8 lie in 7 < i < 10


def test_presets_follow_the_released_defaults():
    restorer = lambda x_t, y, t: y  # noqa: E731
    mask = torch.zeros(1, 1, 8, 8)
    got = {
        "restoration": presets.restoration(restorer),
        "colorization": presets.colorization(),
        "inpainting": presets.inpainting(mask),
        "old_photo_restoration": presets.old_photo_restoration(restorer, mask),
        "ref_restoration": presets.ref_restoration(restorer, tiny_arcface(), torch.zeros(1, 3, 8, 8)),
    }
    assert set(got) == set(presets.PRESETS)
    summary = {k: (g.update, g.norm if g.update == "dynamic" else None, g.scale, [(t.name, t.weight) for t in g.terms]) for k, g in got.items()}
    assert summary == {
        "restoration": ("classic", None, 0.1, [("smooth_semantics", 1.0)]),
        "colorization": ("dynamic", "channel", 0.01, [("lightness", 1.0), ("color_statistics", 0.05)]),
        "inpainting": ("dynamic", "global", 0.01, [("unmasked_region", 1.0)]),
        "old_photo_restoration": ("dynamic", "channel", 0.002, [("lightness", 1.0), ("color_statistics", 0.5)]),
        "ref_restoration": ("classic", None, 0.05, [("smooth_semantics", 1.0), ("identity", 25.0)]),
    }
    assert all((g.repeat_start, g.repeat_stop) == (1.0, 0.7) and all(t.n_steps == 1 for t in g.terms) for g in got.values())
    ref = torch.rand(2, 3, 8, 8) * 2 - 1
    stats = presets.colorization(color_reference=ref).terms[1]
    torch.testing.assert_close(stats.mean, color_stats(ref, average=True)[0])


def test_bind_checks_and_fits_inputs():
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(InputError, match="batch"):
        presets.inpainting(torch.zeros(3, 16, 16)).bind(None, x)
    with pytest.raises(InputError):
        SmoothSemantics(target=torch.zeros(3, 16, 16)).bind(x)
    t = SmoothSemantics(target=torch.zeros(1, 1, 64, 64)).bind(x)
    assert t.target.shape == (1, 3, 16, 16)
    bound = CompositeGuidance((Lightness(mask=torch.ones(1, 1, 16, 16)), UnmaskedRegion(mask=torch.zeros(2, 1, 16, 16)))).bind(None, x)
    assert bound.hole.shape == (2, 1, 16, 16) and bool(bound.hole.all())


def test_guided_sampling_never_synchronises_with_the_host(monkeypatch):
    """Every term at once through DDPM and DDIM with .item()/.cpu()/.tolist()/.numpy()/bool() forbidden."""
    torch.manual_seed(0)
    size = 32
    prior = GaussianMixtureEpsModel(torch.rand(3, 3, size, size) * 2 - 1, std=0.2, var_interp=0.3)
    restorer = randomize(RRDBRestorer(RRDBRestorerConfig(mid_channels=8, num_blocks=1, growth_channels=4)).eval(), 2)
    vgg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    disc = nn.Sequential(nn.Conv2d(3, 4, 4, 4), nn.Flatten(), nn.Linear(4 * 8 * 8, 1)).eval()
    mask = torch.zeros(1, 1, size, size)
    mask[..., 4:9, :] = 1
    ref = torch.rand(1, 3, size, size) * 2 - 1
    terms = (SmoothSemantics(target=restorer, n_steps=2), Lightness(target=restorer, mask=mask), ColorStatistics(),
             UnmaskedRegion(mask=mask), IdentityReference(arcface=tiny_arcface(), reference=ref), Perceptual(vgg=vgg, layers=(1,)),
             Adversarial(discriminator=disc))
    x = torch.randn(2, 3, size, size)
    y = torch.rand(2, 3, size, size) * 2 - 1
    sched = DiffusionSchedule.linear().respace(space_timesteps(1000, 4))
    bound = {u: CompositeGuidance(terms, update=u, repeat_stop=0.2).bind(y, x) for u in ("classic", "dynamic")}
    sched.table("cpu")

    def forbidden(*a, **k):
        raise AssertionError("host synchronisation inside the sampling loop")

    for name in ("item", "cpu", "tolist", "numpy", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    a = sample_ddpm(IDDPMDenoiser(prior), x, sched, guidance=bound["dynamic"], generator=torch.Generator().manual_seed(0))
    b = sample_ddim(IDDPMDenoiser(prior), x, sched, guidance=bound["classic"], eta=0.3, generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


# ----------------------------------------------------------------------------- on real faces
def _load(path: Path, size: int) -> torch.Tensor:
    from PIL import Image

    im = Image.open(path).convert("RGB").resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(im).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def faces():
    """Real aligned faces (FFHQ, CelebA-HQ) at 64 and 32 px; skipped when ../shared/data is absent."""
    hq = SHARED_DATA / "hq"
    if not hq.is_dir():
        pytest.skip(f"real faces not found at {hq} (they live beside the repository, never inside it)")
    files = sorted(hq.glob("0*.png"))[:8] + sorted(hq.glob("celebahq_*.jpg"))[:6]
    return {size: torch.cat([_load(f, size) for f in files]) for size in (64, 32)}


def _mse(a, b, keep=None):
    keep = torch.ones_like(a[:, :1]) if keep is None else keep.expand_as(a[:, :1])
    return (((a - b) ** 2) * keep).sum((1, 2, 3)) / (3 * keep.sum((1, 2, 3)))


def _sample(faces, guidance, y, size=64, steps="ddpm50", sampler="ddpm", batch=4, seed=0):
    """Batch of guided samples from the Gaussian-mixture face prior, and the unguided ones from the same noise."""
    den = IDDPMDenoiser(GaussianMixtureEpsModel(faces[size], std=0.05, var_interp=0.0))
    sched = DiffusionSchedule.linear().respace(space_timesteps(1000, steps))
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    run = sample_ddpm if sampler == "ddpm" else sample_ddim
    out = []
    for g in (guidance, None):
        bound = g.bind(y, x) if g is not None else None
        out.append(run(den, x, sched, guidance=bound, generator=torch.Generator().manual_seed(seed + 1)))
    return out


@pytest.mark.data
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_inpainting_keeps_the_known_pixels_and_fills_the_hole_from_the_prior(faces, sampler):
    face = faces[64][5:6]
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 18:40, 10:54] = 1  # eyes and nose painted out
    y = face * (1 - mask) + mask
    out, free = _sample(faces, presets.inpainting(mask), y, sampler=sampler)
    keep = 1 - mask
    assert (_mse(out, y, keep) < 0.005).all() and (_mse(free, y, keep) > 0.1).all()
    assert (_mse(out, y, mask) > 0.5).all()  # the white paint is gone from the hole...
    assert (_mse(out, face, mask) < 0.01).all()  # ...which holds the face the known pixels imply


@pytest.mark.data
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_colorization_keeps_lightness_and_adds_colour(faces, sampler):
    face = faces[64][5:6]
    y = gray(face)
    out, free = _sample(faces, presets.colorization(), y, sampler=sampler)
    assert (_mse(gray(out), y) < 0.002).all() and (_mse(gray(free), y) > 0.1).all()
    chroma = (out - gray(out)).abs().mean((1, 2, 3))
    assert (chroma > 0.5 * (face - gray(face)).abs().mean()).all()
    assert (_mse(out, face) < 0.01).all()  # the prior's colours for this face


@pytest.mark.data
def test_color_statistics_move_towards_a_reference(faces):
    ref = faces[64][7:8]
    guidance = CompositeGuidance((ColorStatistics.from_image(ref, weight=1.0),), scale=0.05, update="dynamic", norm="channel")
    out, free = _sample(faces, guidance, None)
    (m_r, s_r), (m_o, s_o), (m_f, s_f) = color_stats(ref), color_stats(out), color_stats(free)
    dist = lambda m, s: (m - m_r).abs().sum(1) + (s - s_r).abs().sum(1)  # noqa: E731
    assert dist(m_o, s_o).mean() < 0.2 * dist(m_f, s_f).mean()


@pytest.mark.data
@pytest.mark.parametrize("use_restorer", [False, True])
def test_smooth_semantics_restores_a_sharp_face_from_a_blurry_target(faces, use_restorer):
    face = faces[64][5:6]

    def blur(img):
        return F.interpolate(F.interpolate(img, scale_factor=0.25, mode="bilinear", antialias=True), size=img.shape[-2:], mode="bilinear")

    lq = blur(face)
    target = (lambda x_t, y, t: blur(y)) if use_restorer else lq
    out, free = _sample(faces, presets.restoration(target), lq)
    assert (_mse(out, face) < 0.005).all() and (_mse(free, face) > 0.1).all()
    assert (_mse(out, face) < 0.2 * _mse(lq, face)).all()  # sharper than its own smooth target


@pytest.mark.data
def test_identity_reference_pulls_towards_the_reference_identity(faces):
    torch.manual_seed(0)
    arc = tiny_arcface()
    ref = faces[64][7:8]
    out, free = _sample(faces, CompositeGuidance((IdentityReference(arcface=arc, reference=ref),), scale=0.5), None)
    with torch.no_grad():
        d_out = (arc.embed(out) - arc.embed(ref)).norm(dim=1)
        d_free = (arc.embed(free) - arc.embed(ref)).norm(dim=1)
    assert (d_out < 0.2 * d_free).all()
    assert (_mse(out, ref) < 0.01).all()


@pytest.mark.data
def test_perceptual_guidance_with_torchvision_vgg16(faces):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    vgg = make_layers(cfgs["D"]).eval()  # torchvision's VGG16 feature stack; random weights stand in for ImageNet ones
    ref = faces[32][3:4]
    term = Perceptual(vgg=vgg, target=ref, layers=(3, 8))
    out, free = _sample(faces, CompositeGuidance((term,), scale=3.0), None, size=32, steps="ddpm20")
    bound = term.bind(out)
    with torch.no_grad():
        loss = lambda imgs: torch.stack([bound.loss(im[None], None) for im in imgs])  # noqa: E731
        assert (loss(out) < 0.05 * loss(free).max()).all()
    assert (_mse(out, ref) < 0.01).all()


@pytest.mark.data
def test_adversarial_guidance_raises_the_discriminator_score(faces):
    torch.manual_seed(0)
    disc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 3, 2, 1), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.Linear(16 * 8 * 8, 1)).eval()
    guidance = CompositeGuidance((Adversarial(discriminator=disc, weight=1.0),), scale=0.1, update="dynamic")
    out, free = _sample(faces, guidance, None, size=32, steps="ddpm20")
    with torch.no_grad():
        assert disc(out).min() > disc(free).max()


@pytest.mark.data
def test_old_photo_restoration_colours_and_ignores_scratches(faces):
    face = faces[32][5:6]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, 15:17] = 1
    mask[..., 8:10, :] = 1
    y = gray(face) * (1 - mask) + mask  # a scratched black-and-white photo

    def restorer(x_t, yy, t):  # a smooth, colourless restoration
        return F.interpolate(F.interpolate(yy, scale_factor=0.5, mode="bilinear", antialias=True), size=yy.shape[-2:], mode="bilinear")

    out, free = _sample(faces, presets.old_photo_restoration(restorer, mask, scale=0.1), y, size=32, steps="ddpm20")
    assert (_mse(out, face) < 0.01).all() and (_mse(free, face) > 0.1).all()
    assert (_mse(out, y, mask) > 0.5).all()  # the scratches are not copied

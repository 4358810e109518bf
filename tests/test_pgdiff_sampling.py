"""Diffusion maths (schedule, respacing, learned-range variance) and the samplers, on tiny or analytic models."""

from __future__ import annotations

import math

import pytest
import torch

from bfr_core.errors import InputError
from bfr_core.models.adm_unet import ADMUNet, ADMUNetConfig
from bfr_core.progress import Progress
from bfr_core.sampling import (
    DiffusionSchedule,
    IDDPMDenoiser,
    linear_betas,
    q_posterior,
    q_sample,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
)
from bfr_core.sampling.analytic import GaussianMixtureEpsModel

from .test_pgdiff_golden import randomize
from .test_pgdiff_pipeline import OneAtATime


# ----------------------------------------------------------------------------- schedule maths by hand
def test_linear_betas_and_derived_values_by_hand():
    s = DiffusionSchedule.linear()
    assert len(s) == 1000 and s.timesteps.tolist() == list(range(1000))
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-15) and s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    assert (s.betas[1] - s.betas[0]).item() == pytest.approx((0.02 - 1e-4) / 999, rel=1e-9)
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - s.betas[1].item()), rel=1e-12)
    ac = math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 999) for i in range(500))
    assert s.alphas_cumprod[499].item() == pytest.approx(ac, rel=1e-9)
    # posterior q(x_{t-1} | x_t, x0) at t = 1 (index 1)
    b1, a1, a0 = s.betas[1].item(), s.alphas_cumprod[1].item(), s.alphas_cumprod[0].item()
    assert s.posterior_variance[1].item() == pytest.approx(b1 * (1 - a0) / (1 - a1), rel=1e-12)
    assert s.posterior_mean_coef1[1].item() == pytest.approx(b1 * math.sqrt(a0) / (1 - a1), rel=1e-12)
    assert s.posterior_mean_coef2[1].item() == pytest.approx((1 - a0) * math.sqrt(1 - b1) / (1 - a1), rel=1e-12)
    # β̃_0 = 0, so the clipped log uses β̃_1 there
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(s.posterior_variance[1].item()))
    # a 100-step linear schedule spans the same range (scaled β)
    assert linear_betas(100)[0].item() == pytest.approx(1e-3) and linear_betas(100)[-1].item() == pytest.approx(0.2)


def test_space_timesteps_rules():
    assert sorted(space_timesteps(1000, "ddpm100")) == list(range(0, 1000, 10))
    assert sorted(space_timesteps(1000, "ddpm25")) == list(range(0, 1000, 40))
    assert sorted(space_timesteps(1000, "ddpm1000")) == list(range(1000))
    assert sorted(space_timesteps(1000, 10)) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    # guided-diffusion's docstring example: 300 steps, sections of 10, 15 and 20
    steps = sorted(space_timesteps(300, "10,15,20"))
    assert len(steps) == 45 and steps[:2] == [0, 11] and steps[9] == 99 and steps[10] == 100 and steps[-1] == 299
    with pytest.raises(InputError):
        space_timesteps(1000, "ddpm999")  # no integer stride gives exactly 999 steps
    with pytest.raises(InputError):
        space_timesteps(10, 11)


def test_respacing_recomputes_betas_and_keeps_marginals():
    base = DiffusionSchedule.linear()
    r = base.respace(space_timesteps(1000, "ddpm10"))
    assert r.timesteps.tolist() == list(range(0, 1000, 100)) and r.num_train_steps == 1000
    # ᾱ of the kept steps is unchanged, so q(x_t | x0) is too
    torch.testing.assert_close(r.alphas_cumprod, base.alphas_cumprod[::100], rtol=1e-12, atol=0)
    assert r.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    b1 = 1 - base.alphas_cumprod[100].item() / base.alphas_cumprod[0].item()
    assert r.betas[1].item() == pytest.approx(b1, rel=1e-12)
    # the posterior of the respaced chain uses the respaced β
    assert r.posterior_variance[1].item() == pytest.approx(b1 * (1 - r.alphas_cumprod[0].item()) / (1 - r.alphas_cumprod[1].item()), rel=1e-12)
    # respacing with every step is the identity
    full = base.respace(range(1000))
    torch.testing.assert_close(full.betas, base.betas, rtol=1e-10, atol=0)


def test_q_sample_and_posterior_tensors():
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, "ddpm50"))
    x0, eps = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    xt = q_sample(s, x0, 20, eps)
    torch.testing.assert_close(xt, s.alphas_cumprod[20].sqrt().float() * x0 + (1 - s.alphas_cumprod[20]).sqrt().float() * eps)
    xt_b = q_sample(s, x0, torch.tensor([20, 3]), eps)  # per-sample indices
    torch.testing.assert_close(xt_b[0], xt[0])
    mean, logvar = q_posterior(s, x0, xt, 20)
    c1, c2 = s.posterior_mean_coef1[20].item(), s.posterior_mean_coef2[20].item()
    torch.testing.assert_close(mean, c1 * x0 + c2 * xt)
    assert logvar.shape == xt.shape and torch.allclose(logvar, torch.tensor(s.posterior_log_variance_clipped[20].item()))


class ConstantModel(torch.nn.Module):
    """Returns a given ε and a given v everywhere (to check the denoiser's maths)."""

    def __init__(self, eps: torch.Tensor, v: float):
        super().__init__()
        self.eps, self.v = eps, v
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return torch.cat([self.eps.expand_as(x), torch.full_like(x, self.v)], 1)


@pytest.mark.parametrize("v", [-1.0, 0.0, 1.0])
def test_denoiser_recovers_x0_and_learned_range_variance(v):
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, "ddpm20"))
    x0, eps = torch.rand(1, 3, 8, 8) * 1.6 - 0.8, torch.randn(1, 3, 8, 8)
    i = 7
    xt = q_sample(s, x0, i, eps)
    pred = IDDPMDenoiser(ConstantModel(eps, v))(xt, s, i)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-4, atol=1e-5)
    mean, _ = q_posterior(s, x0, xt, i)
    torch.testing.assert_close(pred.mean, mean, rtol=1e-4, atol=1e-5)
    f = (v + 1) / 2
    expect = f * math.log(s.betas[i].item()) + (1 - f) * s.posterior_log_variance_clipped[i].item()
    torch.testing.assert_close(pred.log_variance, torch.full_like(xt, expect))
    torch.testing.assert_close(pred.variance, pred.log_variance.exp())


def test_denoiser_clips_x0_and_refuses_fixed_variance_models():
    s = DiffusionSchedule.linear()
    xt = torch.full((1, 3, 4, 4), 5.0)
    pred = IDDPMDenoiser(ConstantModel(torch.zeros(1, 3, 4, 4), 0.0))(xt, s, 10)
    assert pred.x0.max() == 1.0
    raw = IDDPMDenoiser(ConstantModel(torch.zeros(1, 3, 4, 4), 0.0), clip_x0=False)(xt, s, 10)
    assert raw.x0.max() > 4

    class ThreeChannels(ConstantModel):
        def forward(self, x, t):
            return x

    with pytest.raises(InputError, match="learned-variance"):
        IDDPMDenoiser(ThreeChannels(torch.zeros(1), 0.0))(xt, s, 10)


# ----------------------------------------------------------------------------- samplers
@pytest.fixture(scope="module")
def tiny_unet():
    cfg = ADMUNetConfig(image_size=64, model_channels=16, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(32,),
                        num_head_channels=16, norm_groups=8)
    return randomize(ADMUNet(cfg).eval(), 4)


def _noise(seed, shape=(2, 3, 64, 64)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_are_deterministic_per_generator_and_batched(tiny_unet, sampler):
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, 4))
    den = IDDPMDenoiser(tiny_unet)
    run = (lambda x, g: sample_ddpm(den, x, s, generator=g)) if sampler == "ddpm" else (lambda x, g: sample_ddim(den, x, s, eta=0.5, generator=g))
    a = run(_noise(0), torch.Generator().manual_seed(1))
    b = run(_noise(0), torch.Generator().manual_seed(1))
    c = run(_noise(0), torch.Generator().manual_seed(2))
    assert a.shape == (2, 3, 64, 64) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().mean() > 1e-3  # the per-step noise matters


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_one_generator_per_image_makes_each_image_independent_of_its_batch(tiny_unet, sampler):
    """With a generator per image, image i's noise comes from generator i only: splitting the batch changes nothing
    (the network runs one image at a time, so only the draws are compared), and one image with its generator is the
    single-stream sampler at batch 1."""
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, 4))
    den = IDDPMDenoiser(OneAtATime(tiny_unet))
    run = (lambda x, g: sample_ddpm(den, x, s, generator=g)) if sampler == "ddpm" else (lambda x, g: sample_ddim(den, x, s, eta=0.5, generator=g))
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    x = _noise(0, (3, 3, 64, 64))
    whole = run(x, gens())
    torch.testing.assert_close(torch.cat([run(x[:2], gens()[:2]), run(x[2:], gens()[2:])]), whole, rtol=0, atol=0)
    torch.testing.assert_close(run(x[1:2], torch.Generator().manual_seed(11)), whole[1:2], rtol=0, atol=0)
    assert (run(x, torch.Generator().manual_seed(10)) - whole).abs().max() > 1e-3, "one stream for the batch differs"
    with pytest.raises(InputError, match="one per image"):
        run(x, gens()[:2])


def test_ddim_eta0_ignores_the_generator_and_batch_elements_are_independent(tiny_unet):
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, 3))
    den = IDDPMDenoiser(tiny_unet)
    x = _noise(3)
    a = sample_ddim(den, x, s, generator=torch.Generator().manual_seed(1))
    b = sample_ddim(den, x, s, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    single = sample_ddim(den, x[1:], s)
    torch.testing.assert_close(single, a[1:], rtol=1e-3, atol=1e-3)  # batch-size-dependent conv rounding only


def test_progress_previews_and_cancellation(tiny_unet):
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, 5))
    seen, info = [], []
    prog = Progress(len(s), on_progress=lambda done, total, preview: seen.append((done, total, preview.shape)))
    record = lambda d: info.append((d["i"], d["index"], int(d["t"][0])))  # noqa: E731
    sample_ddpm(IDDPMDenoiser(tiny_unet), _noise(0, (1, 3, 64, 64)), s, progress=prog, callback=record)
    assert seen == [(i, 5, (1, 3, 64, 64)) for i in range(1, 6)]
    assert info == [(0, 4, 999), (1, 3, 749), (2, 2, 500), (3, 1, 250), (4, 0, 0)]

    class Stop(Exception):
        pass

    calls = []

    def cancel():
        if len(calls) >= 2:
            raise Stop
    counting = CountingModel(tiny_unet, calls)
    with pytest.raises(Stop):
        sample_ddpm(IDDPMDenoiser(counting), _noise(0, (1, 3, 64, 64)), s, progress=Progress(len(s), check_cancel=cancel))
    assert len(calls) == 2  # stopped right after the second step, no further network calls


class CountingModel(torch.nn.Module):
    def __init__(self, inner, calls):
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x, t):
        self.calls.append(int(t[0]))
        return self.inner(x, t)


def _gaussian_case(var_interp: float):
    size, std = 16, 0.3
    mu = torch.linspace(-0.6, 0.6, size * size * 3).reshape(1, 3, size, size)
    den = IDDPMDenoiser(GaussianMixtureEpsModel(mu, std=std, var_interp=var_interp), clip_x0=False)
    return den, mu, std, _noise(5, (64, 3, size, size))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_reproduce_a_gaussian_data_distribution(sampler):
    """With the exact denoiser for N(μ, s²I) data, 200 respaced steps give that mean and spread."""
    den, mu, std, x = _gaussian_case(0.0)
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, "ddpm200"))
    out = sample_ddpm(den, x, s, generator=torch.Generator().manual_seed(6)) if sampler == "ddpm" else sample_ddim(den, x, s)
    resid = out - mu
    assert resid.mean().abs() < 0.01
    assert resid.std().item() == pytest.approx(std, rel=0.04)
    assert (out.mean(0, keepdim=True) - mu).abs().mean() < 0.06  # the batch mean follows μ pixel by pixel


def test_learned_range_variance_is_used_by_ddpm():
    """Few steps: the posterior variance β̃ (v = −1) under-disperses, β (v = +1) over-disperses."""
    s = DiffusionSchedule.linear().respace(space_timesteps(1000, "ddpm50"))
    spread = {}
    for v in (-1.0, 1.0):
        den, mu, std, x = _gaussian_case(v)
        spread[v] = (sample_ddpm(den, x, s, generator=torch.Generator().manual_seed(6)) - mu).std().item()
    assert spread[-1.0] < 0.95 * std and spread[1.0] > 1.03 * std


def test_ddim_rejects_bad_eta(tiny_unet):
    with pytest.raises(InputError):
        sample_ddim(IDDPMDenoiser(tiny_unet), _noise(0), DiffusionSchedule.linear(), eta=-1.0)

"""PLTrans and its HQ dictionary: shapes, sizes, the DWT injection, top-d retrieval, ablations, determinism."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from bfr_core.errors import InputError, WeightsError
from bfr_core.models import discriminators, pltrans, vq
from bfr_core.models.pltrans import PLTrans, WaveletTransform2d
from bfr_core.models.vq import VQGAN
from bfr_core.sampling.schedule import DiffusionSchedule
from bfr_core.seeding import make_generator

from .pltrans_tiny import tiny_pltrans, tiny_vq

pywt = pytest.importorskip("pywt")


def _faces(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -- full-size sizes --------------------------------------------------------------------------------------------


def test_full_size_parameter_counts_and_shapes_on_meta():
    with torch.device("meta"):
        dictionary = VQGAN()
        model = PLTrans()
        disc = discriminators.PatchDiscriminator()
        q = model.encoder(torch.empty(1, 3, 512, 512))
        y = model.decoder(torch.empty(1, 256, 16, 16))
    # RestoreFormer's HQ dictionary (ch 64, mult 1-2-2-4-4-8, 1024 × 256 codes) and taming's PatchGAN.
    assert _count(dictionary) == 72_672_835
    assert tuple(dictionary.quantize.embedding.weight.shape) == (1024, 256)
    assert _count(disc) == 2_765_633
    assert _count(model) == 94_954_555
    assert _count(model.regularizer.unet) == 16_778_704
    assert tuple(q.shape) == (1, 256, 16, 16) and tuple(y.shape) == (1, 3, 512, 512)
    assert tuple(model.prior.codebook.shape) == (1024, 256) and model.prior.r.shape == (8,)


def test_config_round_trips_through_state_dict_shapes():
    with torch.device("meta"):
        full = PLTrans()
        dictionary = VQGAN()
    assert pltrans.config_from_state_dict(full.state_dict()) == full.config
    assert vq.config_from_state_dict(dictionary.state_dict()) == dictionary.config
    cfg = tiny_pltrans(use_dictionary=False, use_prior_transformer=False)
    assert pltrans.config_from_state_dict(PLTrans(cfg).state_dict(), resolution=32) == tiny_pltrans(
        use_dictionary=False, use_prior_transformer=False, num_heads=8, prior_heads=8, cross_heads=8, unet_head_channels=64,
        n_embed=1024, lt_mlp_ratio=4)  # what weights cannot tell takes the full-size default
    no_diff = PLTrans(tiny_pltrans(use_diffusion=False))
    assert not pltrans.config_from_state_dict(no_diff.state_dict(), resolution=32).use_diffusion
    disc = discriminators.PatchDiscriminator()
    assert discriminators.config_from_state_dict(disc.state_dict()) == discriminators.PatchDiscriminatorConfig()
    with pytest.raises(WeightsError, match="PLTrans"):
        pltrans.config_from_state_dict({"foo": torch.zeros(1)})


def test_restoreformer_dictionary_layout_converts():
    """RestoreFormer's attention blocks carry an unused query norm (``norm2``); dropping it gives our layout."""
    sd = VQGAN(tiny_vq()).state_dict()
    rf = dict(sd)
    for key in list(sd):
        if key.endswith(".norm1.weight") and (".attn." in key or "attn_1" in key):
            rf[key.replace("norm1", "norm2")] = torch.ones_like(sd[key])
            rf[key.replace("norm1.weight", "norm2.bias")] = torch.zeros_like(sd[key])
    assert len(rf) > len(sd)
    VQGAN(tiny_vq()).load_state_dict(vq.convert_restoreformer_state_dict(rf), strict=True)


# -- the dictionary -----------------------------------------------------------------------------------------------


def test_vq_forward_straight_through_and_losses():
    torch.manual_seed(0)
    model = VQGAN(tiny_vq())
    x = _faces()
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.indices.shape == (2, 8, 8)
    z = model.quant_conv(model.encoder(x))
    quant, loss, idx = model.quantize(z)
    codes = model.quantize.lookup(idx)
    assert torch.allclose(quant, codes, atol=1e-6)  # forward value is the code
    brute = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 32), model.quantize.embedding.weight).argmin(1)
    assert torch.equal(idx.flatten(), brute)
    mse = torch.mean((codes - z) ** 2)
    assert torch.allclose(loss, 1.25 * mse, rtol=1e-5)  # (1 + β) · mse in value
    # straight-through: the gradient of a function of z_q reaches z unchanged
    z = z.detach().requires_grad_(True)
    zq, _, _ = model.quantize(z)
    (zq * 3).sum().backward()
    assert torch.allclose(z.grad, torch.full_like(z, 3.0))
    # the commitment term moves the encoder with weight β, the codebook term moves the codes
    z2 = z.detach().requires_grad_(True)
    model.quantize.embedding.weight.grad = None
    _, loss, _ = model.quantize(z2)
    loss.backward()
    assert torch.allclose(z2.grad, 0.25 * 2 * (z2 - codes).detach() / z2.numel(), atol=1e-7)
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    with pytest.raises(InputError, match="dictionary takes"):
        model(torch.zeros(1, 3, 16, 16))


def test_dead_codes_restart_on_encoder_outputs():
    q = vq.VectorQuantizer(6, 2)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0], [60.0, 60.0],
                                               [70.0, 70.0], [80.0, 80.0]]))
    z = torch.tensor([[0.1, 0.0], [9.9, 0.1], [0.0, 0.2], [10.2, 0.0], [1.0, 1.0]]).t().reshape(1, 2, 5, 1)
    before = q.embedding.weight.clone()
    used_elsewhere = torch.tensor([False, False, False, True, False, False])  # another process's batch uses code 3
    assert q.used_codes(z).tolist() == [True, True, False, False, False, False]
    dead = q.restart_unused(z, torch.Generator().manual_seed(0), q.used_codes(z) | used_elsewhere)
    assert dead.tolist() == [2, 4, 5]
    w = q.embedding.weight
    assert torch.equal(w[[0, 1, 3]], before[[0, 1, 3]])  # used codes stay
    vectors = z.reshape(2, 5).t()
    rows = [next(i for i in range(5) if torch.equal(w[c], vectors[i])) for c in (2, 4, 5)]  # moved onto z's vectors
    assert len(set(rows)) == 3  # distinct vectors while there are enough
    again = vq.VectorQuantizer(6, 2)
    again.embedding.weight.data.copy_(before)
    again.restart_unused(z, torch.Generator().manual_seed(0), again.used_codes(z) | used_elsewhere)
    assert torch.equal(again.embedding.weight, w)  # the generator alone decides
    assert q.restart_unused(z[:, :, :1], torch.Generator().manual_seed(1)).numel() == 5  # more dead codes than vectors
    assert torch.isfinite(q.embedding.weight).all()


# -- wavelets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wavelet", ["haar", "db2", "bior2.2", "sym4"])
@pytest.mark.parametrize("levels", [1, 2])
def test_dwt_matches_pywavelets_periodization(wavelet, levels):
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 8))
    dwt = WaveletTransform2d(wavelet, levels)
    low, highs = dwt.dwt(torch.from_numpy(x))
    with warnings.catch_warnings():  # PyWavelets warns that short signals see the boundary at every level
        warnings.simplefilter("ignore", UserWarning)
        ref = pywt.wavedec2(x, wavelet, mode="periodization", level=levels, axes=(-2, -1))
    np.testing.assert_allclose(low.numpy(), ref[0], atol=1e-12)
    for lv, high in enumerate(highs):  # ours: finest first; pywt: coarsest first
        for band in range(3):
            np.testing.assert_allclose(high[:, :, band].numpy(), ref[levels - lv][band], atol=1e-12)
    np.testing.assert_allclose(dwt.idwt(low, highs).numpy(), x, atol=1e-10)


def test_injection_keeps_reference_low_band_and_sample_high_bands():
    """Eq. 1: after injection, the LL band equals the (LQ) reference's and every high band the sample's."""
    rng = np.random.default_rng(1)
    sample, reference = rng.standard_normal((2, 1, 4, 16, 16))
    dwt = WaveletTransform2d("haar", 2)
    out = dwt.inject(torch.from_numpy(sample), torch.from_numpy(reference)).numpy()
    got = pywt.wavedec2(out, "haar", mode="periodization", level=2, axes=(-2, -1))
    want_low = pywt.wavedec2(reference, "haar", mode="periodization", level=2, axes=(-2, -1))[0]
    want_high = pywt.wavedec2(sample, "haar", mode="periodization", level=2, axes=(-2, -1))[1:]
    np.testing.assert_allclose(got[0], want_low, atol=1e-12)
    for g, w in zip(got[1:], want_high):
        for gb, wb in zip(g, w):
            np.testing.assert_allclose(gb, wb, atol=1e-12)
    # Haar's level-2 low band is the 4×4 block mean (scaled by 4): the injection swaps the block means.
    blocks = lambda a: a.reshape(*a.shape[:-2], 4, 4, 4, 4).mean((-3, -1))  # noqa: E731
    np.testing.assert_allclose(blocks(out), blocks(reference), atol=1e-12)
    with pytest.raises(InputError, match="unknown wavelet"):
        WaveletTransform2d("nope")


# -- top-d retrieval and the prior module ---------------------------------------------------------------------------


@pytest.mark.parametrize("spread", ["initial", "trained-like"])
def test_top_d_retrieval_matches_brute_force_in_order(spread):
    torch.manual_seed(0)
    prior = PLTrans(tiny_pltrans()).prior
    if spread == "trained-like":  # codes as spread out as the features (the initial ones are within ±1/64)
        prior.codebook.normal_()
    z = torch.randn(2, 32, 8, 8)
    dist, idx = prior.retrieve(z)
    assert idx.shape == (2, 8, 8, 8)
    full = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 32).double(), prior.codebook.double()).pow(2)
    order = full.argsort(1)[:, :8]
    assert torch.equal(idx.reshape(-1, 8), order)
    assert torch.allclose(dist.reshape(-1, 8).double(), full.gather(1, order), rtol=1e-5, atol=1e-4)
    assert bool((dist[..., 1:] >= dist[..., :-1]).all())  # nearest first


def test_prior_combination_and_transformer():
    torch.manual_seed(0)
    model = PLTrans(tiny_pltrans())
    prior = model.prior
    q = torch.randn(2, 32, 8, 8)
    # untrained: r = e₁ and Φ passes z̃ through, so k = v is the nearest code (plain quantisation)
    out = prior(q)
    assert out.key_value.shape == (2, 32, 8, 8)
    nearest = prior.codebook[out.indices[..., 0]].permute(0, 3, 1, 2)
    assert torch.allclose(out.key_value, nearest, atol=1e-6)
    assert torch.allclose(out.z, prior.conv(q), atol=1e-6)  # self-attention output starts at zero
    # Eq. 6: z̃ = Σ_l r_l e^(l), with the retrieved codes in distance order
    with torch.no_grad():
        prior.r.copy_(torch.linspace(1.0, 0.3, 8))
    model_lt_off = PLTrans(tiny_pltrans(use_prior_transformer=False))
    model_lt_off.prior.load_state_dict(prior.state_dict(), strict=False)
    out = model_lt_off.prior(q)
    codes = prior.codebook[out.indices]  # (B, H, W, d, C)
    want = (codes * prior.r[:, None]).sum(3).permute(0, 3, 1, 2)
    assert torch.allclose(out.key_value, want, atol=1e-5)
    # Φ with non-zero output layers changes k and lets gradients reach z (hence E) through the context
    with torch.no_grad():
        for p in prior.phi.parameters():
            p.add_(0.05 * torch.randn_like(p))
    q.requires_grad_(True)
    kv = prior(q).key_value
    assert not torch.allclose(kv, want, atol=1e-3)
    kv.square().sum().backward()
    assert q.grad.abs().sum() > 0 and prior.r.grad.abs().sum() > 0


def test_ablation_switches_change_the_computation_as_stated():
    torch.manual_seed(0)
    base = PLTrans(tiny_pltrans())
    sd = base.state_dict()
    x = _faces()
    q = base.encode(x)

    no_v = PLTrans(tiny_pltrans(use_dictionary=False))
    no_v.load_state_dict({k: v for k, v in sd.items() if k not in ("prior.codebook", "prior.r")}, strict=True)
    assert no_v.prior.codebook is None and not any("codebook" in k for k in no_v.state_dict())
    with torch.no_grad():
        for p in no_v.prior.phi.parameters():
            p.add_(0.05 * torch.randn_like(p))
        out = no_v.prior(q)
    assert out.indices is None
    # w/o V: Φ works on z itself, k = z + Φ(z, z)
    tokens = out.z.flatten(2).transpose(1, 2)
    want = no_v.prior.phi[0](tokens, tokens).transpose(1, 2).reshape_as(out.z)
    assert torch.allclose(out.key_value, want, atol=1e-5)

    no_lt = PLTrans(tiny_pltrans(use_prior_transformer=False))
    no_lt.load_state_dict({k: v for k, v in sd.items() if ".phi." not in k}, strict=True)
    assert len(no_lt.prior.phi) == 0

    no_diff = PLTrans(tiny_pltrans(use_diffusion=False))
    no_diff.load_state_dict({k: v for k, v in sd.items() if not k.startswith("regularizer.")}, strict=True)
    assert no_diff.regularizer is None
    assert no_diff.query(q) is q  # w/o DIFF: the query is q, and no generator is needed
    no_diff(x)

    no_dwt = PLTrans(tiny_pltrans(use_dwt=False))
    no_dwt.load_state_dict(sd, strict=True)  # the DWT has no parameters
    assert no_dwt.regularizer.dwt is None and base.regularizer.dwt is not None
    with torch.no_grad():
        a = base.query(q, 100, 10, 3, make_generator(0))
        b = no_dwt.query(q, 100, 10, 3, make_generator(0))
    assert not torch.allclose(a, b)
    with pytest.raises(InputError, match="Generator"):
        base(x)


# -- the regulariser ----------------------------------------------------------------------------------------------


def test_levels_and_posterior_coefficients():
    reg = PLTrans(tiny_pltrans()).regularizer
    assert reg.levels(200, 20, 10) == [200, 182, 164, 146, 128, 110, 92, 74, 56, 38, 20, 0]
    assert reg.levels(10, 0, None) == list(range(10, -1, -1))
    assert reg.levels(7, 2, 3) == [7, 5, 4, 2, 0]
    assert reg.num_evaluations(200, 20, 10) == 11 and reg.num_evaluations(50, 0, 5) == 5
    for bad in [(0, 0, 1), (10, 10, 1), (1001, 0, 10), (10, 0, 11), (10, 0, 0), (10.5, 0, 3)]:
        with pytest.raises(InputError):
            reg.levels(*bad)
    sched = DiffusionSchedule.linear(1000)
    ab = reg.alpha_bar
    for t in (1, 2, 500, 1000):
        c0, ct, std = pltrans.posterior_coefficients(float(ab[t]), float(ab[t - 1]))
        assert math.isclose(c0, float(sched.posterior_mean_coef1[t - 1]), rel_tol=1e-9)
        assert math.isclose(ct, float(sched.posterior_mean_coef2[t - 1]), rel_tol=1e-9)
        assert math.isclose(std**2, float(sched.posterior_variance[t - 1]), rel_tol=1e-9, abs_tol=1e-15)


def test_regularize_recovers_the_data_point_with_an_oracle_denoiser():
    """With ε_θ the exact noise of a one-point data distribution, every step's û₀ and the final jump are exact."""
    reg = PLTrans(tiny_pltrans()).regularizer
    c = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    reg.moments = lambda q: (q, torch.zeros_like(q))
    reg.from_latent = nn.Identity()
    reg.calibrate_scale(c * 0.5)  # the chain runs on scaled latents; the result comes back unscaled

    def oracle(u, level):
        a = reg.alpha_bar_at(int(level), u)
        return (u - math.sqrt(a) * c * reg.latent_scale) / math.sqrt(1 - a)

    reg.predict_eps = oracle
    for n, s, steps in [(300, 30, 7), (50, 0, 50), (1000, 999, 1)]:
        out = reg.regularize(c, n, s, steps, make_generator(1))
        assert torch.allclose(out, c, atol=1e-4), (n, s, steps)


def _wake(model: nn.Module) -> nn.Module:
    """Make the zero-initialised output layers non-zero, so that every branch (the query too) reaches the output."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.02 * torch.randn_like(p))
    return model


def test_forward_shapes_determinism_and_per_sample_generators():
    torch.manual_seed(0)
    model = _wake(PLTrans(tiny_pltrans())).eval()
    x = _faces(3)
    with torch.no_grad():
        a = model(x, 150, 10, 4, make_generator(5))
        b = model(x, 150, 10, 4, make_generator(5))
        c = model(x, 150, 10, 4, make_generator(6))
        gens = [make_generator(5, stream=str(i)) for i in range(3)]
        d = model(x, 150, 10, 4, gens)
        e = model(x[1:2], 150, 10, 4, [make_generator(5, stream="1")])
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(d[1:2], e, atol=1e-5)  # a face's noise depends only on its own generator
    with pytest.raises(InputError, match="generators"):
        model(x, 150, 10, 4, gens[:2])
    with pytest.raises(InputError, match="aligned faces"):
        model(_faces(1, 16), generator=make_generator(0))


def test_golden_slice_of_a_seeded_tiny_model():
    torch.manual_seed(1234)
    model = _wake(PLTrans(tiny_pltrans())).eval()
    with torch.no_grad():
        out = model(_faces(1, seed=7), 120, 12, 3, make_generator(9))
    golden = torch.tensor(GOLDEN)
    assert torch.allclose(out[0, 0, 0, :6], golden, atol=1e-4), out[0, 0, 0, :6].tolist()


GOLDEN = [-0.0173344, 0.0581895, 0.0755506, 0.0153251, 0.0507758, 0.0105581]


def test_load_dictionary_starts_as_the_dictionary_reconstruction():
    """Untrained P, Φ and cross-attention pass the nearest codes through, so PLTrans starts as the VQGAN."""
    torch.manual_seed(0)
    dictionary = VQGAN(tiny_vq()).eval()
    model = PLTrans(tiny_pltrans()).eval()
    model.load_dictionary(dictionary)
    x = _faces()
    with torch.no_grad():
        assert torch.allclose(model(x, generator=make_generator(0)), dictionary(x).reconstruction, atol=1e-5)
    with pytest.raises(InputError, match="does not match"):
        model.load_dictionary(VQGAN(tiny_vq(n_embed=32)))


def test_patch_discriminator_shapes_and_errors():
    d = discriminators.PatchDiscriminator(discriminators.PatchDiscriminatorConfig(ndf=8))
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(InputError, match="PatchGAN"):
        d(torch.zeros(2, 3, 16, 16))


def test_save_and_load_through_the_weights_loader(tmp_path):
    """Our safetensors files carry the config (wavelet, heads, T, switches), so nothing is guessed on load."""
    from bfr_core.weights import architectures as archs
    from bfr_core.weights import load_model, save_model

    arch = archs.Architecture("pltrans_test", ("prior.conv.weight", "fuse.0.q.weight"), "bfr_core.models.pltrans:PLTrans",
                              "bfr_core.models.pltrans:config_from_state_dict")
    archs.register(arch, replace=True)
    try:
        torch.manual_seed(0)
        model = _wake(PLTrans(tiny_pltrans(dwt_wavelet="db2", dwt_levels=1))).eval()
        model.regularizer.latent_scale.fill_(0.5)
        path = save_model(model, tmp_path / "tiny.safetensors", "pltrans_test")
        loaded = load_model(path, "pltrans_test", cache=False).model
        assert loaded.config == model.config and float(loaded.regularizer.latent_scale) == 0.5
        x = _faces(1)
        with torch.no_grad():
            assert torch.equal(loaded(x, 80, 8, 2, make_generator(1)), model(x, 80, 8, 2, make_generator(1)))
    finally:
        archs.unregister(arch.name)

"""VSPBFR models: official layouts and parameter counts at full size, tiny forwards, noise and seeding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bfr_core.errors import InputError, WeightsError
from bfr_core.models import code_diffuser, e4e, smart, stylegan2, vspbfr_discriminator
from bfr_core.sampling.wplus import q_sample, sample_eps, sample_x0, vspbfr_schedule

from .vspbfr_tiny import TINY_CONFIGS, build

LAYOUTS = Path(__file__).parent / "fixtures" / "official_layouts"

# (module, model class, config class, official file, prefix in that file, official parameter count)
FULL = {
    "e4e": (e4e, e4e.Encoder4Editing, e4e.E4EConfig, "style_encoder_decoder", "state_dict.encoder.", 267_136_704),
    "stylegan2": (stylegan2, stylegan2.Generator, stylegan2.GeneratorConfig, "style_encoder_decoder",
                  "state_dict.decoder.", 30_370_060),
    "code_diffuser": (code_diffuser, code_diffuser.CodeDiffuser, code_diffuser.CodeDiffuserConfig, "code_diffuser",
                      "att_mapper.", 10_510_336),
    "restorer": (smart, smart.RestorationNet, smart.RestorationNetConfig, "restoration_net", "g_ema.", 112_550_773),
    "discriminator": (vspbfr_discriminator, vspbfr_discriminator.Discriminator,
                      vspbfr_discriminator.DiscriminatorConfig, "restoration_net", "d.", 28_982_849),
}


def layout(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def official_sd(kind: str) -> dict[str, torch.Tensor]:
    """Meta tensors with exactly the official keys and shapes of ``kind``, taken out of its file's nesting.

    The code diffuser's own keys start with ``att_mapper.``, and its file nests them under ``att_mapper`` again.
    e4e's ``latent_avg`` lives at the top level of the file (the one documented mapping).
    """
    _, _, _, file, prefix, _ = FULL[kind]
    tensors = layout(file)["tensors"]
    sd = {k[len(prefix):]: torch.empty(v, device="meta") for k, v in tensors.items() if k.startswith(prefix)}
    if kind == "e4e":
        sd["latent_avg"] = torch.empty(tensors["latent_avg"], device="meta")
    return sd


def meta_model(kind: str):
    _, cls, cfg_cls, *_ = FULL[kind]
    with torch.device("meta"):
        return cls(cfg_cls())


@pytest.mark.parametrize("kind", list(FULL))
def test_full_size_parameter_count_and_layout_match_the_official_files(kind):
    model = meta_model(kind)
    n = sum(p.numel() for p in model.parameters())
    assert n == FULL[kind][5]  # exact (the issue asks for 0.1 %)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = {k: list(v.shape) for k, v in official_sd(kind).items()}
    assert ours == official


@pytest.mark.parametrize("kind", list(FULL))
def test_official_state_dict_loads_strictly_and_config_is_inferred(kind):
    module = FULL[kind][0]
    sd = official_sd(kind)
    cfg = module.config_from_state_dict(sd)
    assert cfg == FULL[kind][2]()  # the defaults are the official full size
    model = meta_model(kind)
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_fixture_files_cover_every_tensor_of_the_three_official_files():
    files = {f: layout(f)["tensors"] for f in ("style_encoder_decoder", "code_diffuser", "restoration_net")}
    claimed = {f: set() for f in files}
    for kind, (_, _, _, file, prefix, _) in FULL.items():
        claimed[file] |= {prefix + k for k in meta_model(kind).state_dict() if k != "latent_avg"}
    claimed["style_encoder_decoder"].add("latent_avg")
    claimed["restoration_net"] |= {"g." + k[len("g_ema."):] for k in files["restoration_net"] if k.startswith("g_ema.")}
    for f, tensors in files.items():
        assert set(tensors) == claimed[f], f


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_tiny_configs_round_trip_through_config_from_state_dict(kind):
    module = FULL[kind][0]
    cls, cfg = TINY_CONFIGS[kind]
    sd = cls(cfg).state_dict()
    rebuilt = cls(module.config_from_state_dict(sd)).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_config_from_state_dict_rejects_foreign_state_dicts():
    sd = {"conv.weight": torch.zeros(1)}
    for module in (e4e, stylegan2, code_diffuser, smart, vspbfr_discriminator):
        with pytest.raises(WeightsError):
            module.config_from_state_dict(sd)


# --- StyleGAN2 -------------------------------------------------------------------------------------------------


def test_upfirdn2d_matches_a_direct_definition():
    k = stylegan2.make_kernel([1, 3, 3, 1]) * 4
    x = torch.randn(1, 2, 5, 5)
    up = torch.zeros(1, 2, 10, 10)
    up[:, :, ::2, ::2] = x  # zero insertion
    padded = torch.nn.functional.pad(up, [2, 1, 2, 1])
    want = torch.nn.functional.conv2d(padded, torch.flip(k, [0, 1]).expand(2, 1, 4, 4), groups=2)
    assert torch.allclose(stylegan2.upfirdn2d(x, k, up=2, pad=(2, 1)), want, atol=1e-6)
    down = stylegan2.upfirdn2d(x, stylegan2.make_kernel([1, 3, 3, 1]), down=2, pad=(1, 1))
    assert down.shape == (1, 2, 2, 2)


@pytest.mark.parametrize("up", [True, False])
def test_folding_the_blur_into_the_resampling_conv_is_the_same_function(up):
    """Accelerators merge the FIR into the strided (transposed) conv; the CPU blurs separately."""
    conv = stylegan2.ModulatedConv2d(6, 5, 3, 8, upsample=up, downsample=not up)
    w, x, s = conv.scale * conv.weight[0], torch.randn(2, 6, 9, 9), conv.modulation(torch.randn(2, 8))
    kw = dict(up=up, down=not up, blur=conv.blur)
    a = stylegan2.modulated_conv2d(x, w, s, fold_fir=False, **kw)
    b = stylegan2.modulated_conv2d(x, w, s, fold_fir=True, **kw)
    assert a.shape == b.shape == ((2, 5, 18, 18) if up else (2, 5, 4, 4))
    assert torch.allclose(a, b, atol=1e-5)


def test_generator_stops_early_with_the_same_taps_and_draws_noise_in_layer_order():
    g = build("stylegan2")
    codes = torch.randn(2, 10, 16)
    full = g(codes, generator=torch.Generator().manual_seed(3), max_resolution=32, return_image=True)
    assert full.image.shape == (2, 3, 64, 64)
    assert [f.shape[-1] for f in full.features] == [4, 8, 16, 32, 64]
    part = g(codes, generator=torch.Generator().manual_seed(3), max_resolution=32)
    assert part.image is None and len(part.features) == 4
    for a, b in zip(part.features, full.features):
        assert torch.equal(a, b)  # the taps do not depend on whether the rest runs
    # explicit noise in rosinality's layer order reproduces the generator draws
    noise = g.make_noise(2, torch.Generator().manual_seed(3), max_resolution=32, return_image=True)
    assert [n.shape[-1] for n in noise] == g.noise_resolutions(return_image=True)
    assert torch.equal(g(codes, noise=noise, return_image=True).image, full.image)
    assert g.noise_resolutions(32) == [4, 8, 8, 16, 16, 32]
    # the taps' noise is drawn first, so the image's extra layers do not change it
    taps_only = g.make_noise(2, torch.Generator().manual_seed(3), max_resolution=32)
    with_image = g.make_noise(2, torch.Generator().manual_seed(3), max_resolution=32, return_image=True)
    assert all(torch.equal(a, b) for a, b in zip(taps_only, with_image))
    with pytest.raises(InputError, match="noise maps"):
        g(codes, noise=noise[:3], return_image=True)
    with pytest.raises(InputError, match="max_resolution"):
        g(codes, max_resolution=48)
    with pytest.raises(InputError, match="rows"):
        g(codes[:, :3], max_resolution=64)


def test_noise_strength_matters_and_constant_noise_buffers_exist():
    g = build("stylegan2")
    codes = torch.randn(1, 10, 16)
    a = g(codes, generator=torch.Generator().manual_seed(0), return_image=True).image
    b = g(codes, generator=torch.Generator().manual_seed(1), return_image=True).image
    assert not torch.allclose(a, b)
    consts = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    c1 = g(codes, noise=consts, return_image=True).image
    assert torch.equal(c1, g(codes, noise=consts, return_image=True).image)


# --- e4e -------------------------------------------------------------------------------------------------------


def test_e4e_resizes_adds_latent_avg_and_broadcasts_w0():
    enc = build("e4e")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = enc(x)
    assert codes.shape == (2, 10, 16)
    x64 = torch.nn.functional.interpolate(x, (64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(enc(x64), codes)
    enc.progressive_stage = 0  # only w0: every row equal before latent_avg
    w = enc(x) - enc.latent_avg
    assert torch.allclose(w, w[:, :1].expand_as(w), atol=1e-6)
    with pytest.raises(InputError, match="style encoder"):
        enc(torch.zeros(1, 4, 32, 32))


# --- code diffuser and sampler ---------------------------------------------------------------------------------


def test_released_schedule_values():
    """β = (linspace(√0.1, √0.99, 4))² and the posterior-mean coefficients, to the digits of the reference."""
    s = vspbfr_schedule()
    assert torch.allclose(s.betas, torch.tensor([0.100, 0.294, 0.591, 0.990]), atol=1e-3)
    assert torch.allclose(s.alphas_cumprod, torch.tensor([0.900, 0.635, 0.260, 0.0026]), atol=1e-3)
    assert torch.allclose(s.posterior_mean_coef1, torch.tensor([1.000, 0.765, 0.636, 0.506]), atol=1e-3)
    assert torch.allclose(s.posterior_mean_coef2, torch.tensor([0.0, 0.230, 0.315, 0.074]), atol=1e-3)
    assert s.posterior_mean_coef1[0] == 1.0 and s.posterior_mean_coef2[0] == 0.0


def test_x0_sampler_is_deterministic_and_ends_on_the_last_prediction():
    cd = build("code_diffuser")
    cond, start = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    seen = []

    def denoiser(x, c, t):
        out = cd(x, c, t)
        seen.append((t[0].item(), out))
        return out

    w0 = sample_x0(denoiser, cond, vspbfr_schedule(), start=start)
    assert [t for t, _ in seen] == [3, 2, 1, 0]
    assert torch.equal(w0, seen[-1][1])
    assert torch.equal(sample_x0(cd, cond, vspbfr_schedule(), start=start), w0)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(sample_x0(cd, cond, vspbfr_schedule(), generator=g1),
                       sample_x0(cd, cond, vspbfr_schedule(), start=torch.randn(2, 10, 16, generator=g2)))


def test_eps_sampler_is_seeded_and_stochastic():
    cd = build("code_diffuser")
    cond = torch.randn(2, 10, 16)

    def run(seed):
        return sample_eps(cd, cond, vspbfr_schedule(), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.allclose(run(1), run(2))
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    s = vspbfr_schedule()
    want = s.sqrt_alphas_cumprod[3] * x0 + s.sqrt_one_minus_alphas_cumprod[3] * eps
    assert torch.allclose(q_sample(x0, 3, eps, s), want)


def test_code_diffuser_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="same shape"):
        build("code_diffuser")(torch.randn(1, 10, 16), torch.randn(1, 9, 16), 0)


# --- restorer and discriminator --------------------------------------------------------------------------------


def _restorer_inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 32, 32, generator=g) * 2 - 1
    bank = [torch.randn(b, 16, 4 * 2 ** k, 4 * 2 ** k, generator=g) for k in range(5)]
    return x, bank, torch.randn(b, 10, 16, generator=g)


def test_restorer_noise_by_module_path_equals_generator_draws():
    rn = build("restorer")
    x, bank, codes = _restorer_inputs()
    styles = rn.random_styles(2, torch.Generator().manual_seed(1))
    out = rn(x, bank, codes, styles, generator=torch.Generator().manual_seed(2))
    assert out.shape == (2, 3, 32, 32)
    noise = rn.make_noise(2, torch.Generator().manual_seed(2))
    assert list(noise) == [name for name, _ in rn.noise_layers()]
    assert set(noise) == {n[: -len(".weight")] for n, _ in rn.named_parameters() if n.endswith("noise.weight")}
    assert torch.equal(rn(x, bank, codes, styles, noise=noise), out)
    other = dict(noise, **{"encoder_convs.0.noise": torch.zeros(2, 1, 32, 32)})
    assert not torch.allclose(rn(x, bank, codes, styles, noise=other), out)
    del other["conv1.noise"]
    with pytest.raises(InputError, match="conv1.noise"):
        rn(x, bank, codes, styles, noise=other)


def test_style_mixing_per_sample_and_styles_from_z():
    rn = build("restorer")
    z1, z2 = torch.randn(3, 16), torch.randn(3, 16)
    s = rn.styles_from_z(z1, z2, torch.tensor([1, 3, 6]))
    w1, w2 = rn.mapping(z1), rn.mapping(z2)
    assert torch.equal(s[1, 2], w1[1]) and torch.equal(s[1, 3], w2[1]) and torch.equal(s[2, 5], w1[2])
    assert torch.equal(rn.styles_from_z(z1)[:, 4], w1)
    never = rn.random_styles(64, torch.Generator().manual_seed(0), mixing_prob=0.0)
    assert torch.equal(never, never[:, :1].expand_as(never))
    always = rn.random_styles(64, torch.Generator().manual_seed(0), mixing_prob=1.0)
    assert not torch.equal(always[:, 0], always[:, -1])
    _, _, idx = rn.sample_mixing(400, torch.Generator().manual_seed(0), mixing_prob=0.5)
    frac = (idx < rn.n_latent).float().mean().item()
    assert 0.4 < frac < 0.6 and idx.min() >= 1


def test_restorer_errors_name_the_problem():
    rn = build("restorer")
    x, bank, codes = _restorer_inputs()
    styles = rn.random_styles(2)
    with pytest.raises(InputError, match="aligned faces"):
        rn(x[:, :, :16, :16], bank, codes, styles)
    with pytest.raises(InputError, match="feature bank"):
        rn(x, [b[:, :8] for b in bank], codes, styles)
    with pytest.raises(InputError, match="codes"):
        rn(x, bank, codes[:, :4], styles)


def test_restorer_dropout_is_off_in_eval_and_on_in_train():
    rn = build("restorer")
    x, bank, codes = _restorer_inputs()
    styles, noise = rn.random_styles(2), rn.make_noise(2)
    assert torch.equal(rn(x, bank, codes, styles, noise=noise), rn(x, bank, codes, styles, noise=noise))
    rn.train()
    torch.manual_seed(0)
    a = rn(x, bank, codes, styles, noise=noise)
    torch.manual_seed(1)
    assert not torch.allclose(a, rn(x, bank, codes, styles, noise=noise))


def test_discriminator_shapes_and_group_check():
    d = build("discriminator")
    assert d(torch.randn(4, 3, 32, 32)).shape == (4, 1)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    with pytest.raises(InputError, match="divisible"):
        d(torch.randn(6, 3, 32, 32))

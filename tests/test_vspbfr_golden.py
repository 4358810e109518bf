"""Golden numbers recorded from the official VSPBFR code on the tiny configurations (see ``vspbfr_tiny.py``).

The official code (github.com/LonglongaaaGo/VSPBFR, HEAD e1f9987), with its CUDA ops replaced by their
PyTorch fallbacks, channel tables capped at 16 and e4e's backbone cut to one unit per stage (widths 8/12/16/20),
was run on the weights and inputs built below; each entry is six evenly spaced values of the flattened output,
its sum and its mean absolute value. Our modules must reproduce them to float rounding: this pins every
formula (modulation, demodulation, dilations, flipped style order, noise placement, token/channel attention,
the x0 sampler) to the released code without running it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bfr_core.sampling.wplus import sample_x0, vspbfr_schedule

from .vspbfr_tiny import build

GOLDEN = {  # recorded from the official code, see the module docstring
    'e4e': dict(
        slice=[-0.0640591, 0.0627144, 0.2245137, 0.1649254, -0.0891811, -0.5775821],
        sum=-16.151846, abs_mean=0.1523455),
    'stylegan2_image': dict(
        slice=[0.3485548, -0.8135492, -0.6958784, -0.3783692, -0.2668659, -0.1750176],
        sum=-29302.09479, abs_mean=1.4818452),
    'stylegan2_tap_32': dict(
        slice=[0.2883177, 0.4095178, -0.2836516, -0.0261062, -0.2056265, -0.0018594],
        sum=23958.178823, abs_mean=0.8311293),
    'code_diffuser_t2': dict(
        slice=[-0.5551441, 3.3974762, 3.9746943, 3.7809832, -0.6442337, 3.8892834],
        sum=124.819103, abs_mean=1.4354591),
    'sampler_x0': dict(
        slice=[-0.4926103, -0.2907267, -2.5803111, 0.2099248, 2.9821005, 3.11727],
        sum=120.10559, abs_mean=1.3796084),
    'restorer_mixed': dict(
        slice=[0.8361653, 3.4650247, -4.6155205, 0.4069478, 0.8854659, -1.3996246],
        sum=5673.870348, abs_mean=7.3413395),
    'restorer_single': dict(
        slice=[0.01964, 1.5435051, 0.6313349, -1.4693964, 1.6184628, -0.5580801],
        sum=25342.165659, abs_mean=7.3298595),
    'discriminator': dict(
        slice=[-0.1182552, -0.130066, -0.0343444, -0.1738686],
        sum=-0.456534, abs_mean=0.1141336),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _outputs() -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        enc = build("e4e")
        out["e4e"] = enc(torch.rand(2, 3, 32, 32, generator=_gen(1)) * 2 - 1)

        g = _gen(2)
        gen = build("stylegan2")
        codes = torch.randn(2, 10, 16, generator=g)
        noise = [torch.randn(2, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), generator=g) for i in range(9)]
        feats, image = gen(codes, noise=noise, return_image=True)
        out["stylegan2_image"], out["stylegan2_tap_32"] = image, feats[3]

        g = _gen(3)
        cd = build("code_diffuser")
        cond, start = torch.randn(2, 10, 16, generator=g), torch.randn(2, 10, 16, generator=g)
        out["code_diffuser_t2"] = cd(start, cond, torch.full((2,), 2))
        out["sampler_x0"] = sample_x0(cd, cond, vspbfr_schedule(), start=start)

        g = _gen(4)
        rn = build("restorer")
        x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
        bank = [torch.randn(2, 16, 4 * 2 ** k, 4 * 2 ** k, generator=g) for k in range(4)]
        rcodes = torch.randn(2, 10, 16, generator=g)
        z1, z2 = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
        rnoise = rn.make_noise(2, g)
        out["restorer_mixed"] = rn(x, bank, rcodes, rn.styles_from_z(z1, z2, 3), noise=rnoise)
        out["restorer_single"] = rn(x, bank, rcodes, rn.styles_from_z(z1), noise=rnoise)

        out["discriminator"] = build("discriminator")(torch.randn(4, 3, 32, 32, generator=_gen(5)))
    return out


@pytest.fixture(scope="module")
def outputs() -> dict[str, torch.Tensor]:
    return _outputs()


@pytest.mark.parametrize("name", list(GOLDEN))
def test_matches_the_official_code(outputs, name):
    want, got = GOLDEN[name], outputs[name].double().flatten()
    step = max(1, got.numel() // 6)
    scale = got.abs().max().item()
    expected = torch.tensor(want["slice"], dtype=torch.float64)
    assert torch.allclose(got[::step][:6], expected, rtol=1e-4, atol=1e-5 * scale)
    assert got.abs().mean().item() == pytest.approx(want["abs_mean"], rel=1e-4)
    assert got.sum().item() == pytest.approx(want["sum"], abs=1e-5 * want["abs_mean"] * got.numel() + 1e-6)


def test_e4e_input_resize_is_bilinear_without_corner_alignment():
    """The official code resizes with ``F.interpolate(x, (256, 256), mode="bilinear")`` (corners not aligned)."""
    enc = build("e4e")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(enc(x), enc(F.interpolate(x, (64, 64), mode="bilinear", align_corners=False)))

"""PGDiff networks: full-size sizes, the released checkpoint layouts, config inference, small forwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bfr_core.models import adm_unet, arcface, rrdb_restorer
from bfr_core.models.adm_unet import ADMUNet, ADMUNetConfig
from bfr_core.models.arcface import IResNet, IResNetConfig, arcface_input
from bfr_core.models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig

from .test_pgdiff_golden import TINY_UNET, randomize

LAYOUTS = Path(__file__).parent / "fixtures" / "official_layouts"

ARCHS = {
    "pgdiff_difface_unet512": (ADMUNet, adm_unet.config_from_state_dict),
    "pgdiff_restorer_rrdb": (RRDBRestorer, rrdb_restorer.config_from_state_dict),
    "arcface_iresnet50": (IResNet, arcface.config_from_state_dict),
}


def layout(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def fake_checkpoint(spec: dict) -> dict:
    """A meta-tensor checkpoint nested exactly like the released file."""
    tensors = {
        spec["key_prefix"] + key: torch.empty(shape, device="meta", dtype=torch.int64 if key.endswith("num_batches_tracked") else torch.float32)
        for key, shape in spec["tensors"]
    }
    for level in reversed(spec["container"]):
        tensors = {level: tensors}
    return tensors


def unwrap(ckpt: dict, spec: dict) -> dict:
    """The one documented mapping from a released file to our state dict: open the container, strip the prefix."""
    for level in spec["container"]:
        ckpt = ckpt[level]
    prefix = spec["key_prefix"]
    assert all(k.startswith(prefix) for k in ckpt)
    return {k[len(prefix):]: v for k, v in ckpt.items()}


@pytest.mark.parametrize("name", list(ARCHS))
def test_full_size_matches_released_layout_and_loads_strictly(name):
    cls, infer = ARCHS[name]
    spec = layout(name)
    with torch.device("meta"):
        model = cls()
    assert sum(p.numel() for p in model.parameters()) == spec["parameters"]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: shape for k, shape in spec["tensors"]}
    sd = unwrap(fake_checkpoint(spec), spec)
    model.load_state_dict(sd, strict=True, assign=True)
    assert infer(sd) == model.config


def test_released_param_counts_are_the_documented_ones():
    assert [layout(n)["parameters"] for n in ARCHS] == [159_788_454, 16_779_518, 43_590_848]


def test_unet_config_round_trip_on_tiny_and_odd_configs():
    for cfg in [
        ADMUNetConfig(**TINY_UNET),
        ADMUNetConfig(image_size=64, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=(2, 1, 3), attention_resolutions=(16,),
                      num_head_channels=32, use_scale_shift_norm=False),
    ]:
        with torch.device("meta"):
            sd = ADMUNet(cfg).state_dict()
        assert adm_unet.config_from_state_dict(sd, image_size=64, num_head_channels=32) == cfg


def test_unet_attention_sits_at_feature_resolutions_not_downsampling_factors():
    cfg = ADMUNetConfig()
    assert cfg.attention_levels == (4, 5, 6)  # 32, 16, 8 px at 512 px input
    with torch.device("meta"):
        model = ADMUNet(cfg)
    attn_blocks = [i for i, b in enumerate(model.input_blocks) if any(isinstance(m, adm_unet.AttentionBlock) for m in b)]
    assert attn_blocks == [12, 13, 15, 16, 17, 19, 20, 21, 22]  # the 2 + 3 + 4 res blocks of the 32, 16, 8 px levels
    heads = {m.num_heads for m in model.modules() if isinstance(m, adm_unet.AttentionBlock)}
    assert heads == {4, 8}  # 64 channels per head at 256 and 512 channels


def test_unet_tiny_forward_shape_dtype_and_time_dependence():
    torch.manual_seed(0)
    cfg = ADMUNetConfig(image_size=64, model_channels=16, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(32,),
                        num_head_channels=16, norm_groups=8)
    model = randomize(ADMUNet(cfg).eval(), 0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = model(x, torch.tensor([10, 10]))
        b = model(x, torch.tensor([900, 900]))
    assert a.shape == (2, 6, 64, 64) and a.dtype == torch.float32
    assert (a - b).abs().mean() > 0.05 * a.abs().mean()  # the timestep conditions the output
    with torch.no_grad():
        one = model(x[1:], torch.tensor([10]))
    torch.testing.assert_close(one, a[1:], rtol=1e-4, atol=1e-5)  # batch elements are independent


def test_fresh_unet_is_zero_residual_like_the_released_init():
    """Res-block output convs and attention projections start at zero, so every block starts as identity."""
    model = ADMUNet(ADMUNetConfig(**TINY_UNET))
    zero = [n for n, p in model.named_parameters() if (".out_layers.3." in n or ".proj_out." in n)]
    assert zero and all(model.get_parameter(n).abs().sum() == 0 for n in zero)


def test_restorer_tiny_forward_clamps_and_uses_every_input():
    torch.manual_seed(0)
    model = RRDBRestorer(RRDBRestorerConfig(mid_channels=16, num_blocks=2, growth_channels=8)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    xt, y, t = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([999, 3])
    with torch.no_grad():
        raw = model(xt, y, t, clamp=False)
        out = model(xt, y, t)
        assert raw.shape == (2, 3, 32, 32) and raw.abs().max() > 1
        torch.testing.assert_close(out, raw.clamp(-1, 1))
        assert (model(xt, -y, t) - out).abs().mean() > 1e-3
        assert (model(xt, y, torch.tensor([0, 500])) - out).abs().mean() > 1e-4
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 30, 30), torch.randn(1, 3, 30, 30), torch.tensor([1]))


def test_restorer_config_from_tiny_state_dict():
    cfg = RRDBRestorerConfig(mid_channels=16, num_blocks=3, growth_channels=8)
    assert rrdb_restorer.config_from_state_dict(RRDBRestorer(cfg).state_dict()) == cfg


def test_arcface_tiny_embed_and_preprocessing():
    torch.manual_seed(0)
    cfg = IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), num_features=32)
    model = IResNet(cfg).eval()
    assert arcface.config_from_state_dict(model.state_dict()) == cfg
    face = torch.rand(2, 3, 512, 512) * 2 - 1
    small = arcface_input(face)
    assert small.shape == (2, 3, 112, 112)
    # antialiased: a 512→112 resize averages, so the result is much smoother than point sampling
    assert small.std() < face[:, :, ::4, ::4].std() * 0.6
    with torch.no_grad():
        emb = model.embed(face)
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb, model(small))

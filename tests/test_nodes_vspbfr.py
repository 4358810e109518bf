"""VSPBFR nodes on tiny random weights: the four-stage graph equals the one-node restore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import comfy_harness as harness


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_vspbfr")
    pack = harness.load_pack(base)
    import folder_paths

    from tests import tiny_weights

    subs = tiny_weights.write_vspbfr(Path(folder_paths.models_dir) / "bfr")
    vspbfr = harness.run(pack["BFRVSPBFRLoader"], style_encoder=subs["vspbfr-style-encoder (auto-download)"],
                         code_diffuser=subs["vspbfr-code-diffuser (auto-download)"],
                         restorer=subs["vspbfr-restoration-net (auto-download)"], precision="fp32").args[0]
    return pack, vspbfr


def test_four_stage_graph_equals_one_node(setup):
    pack, vspbfr = setup
    image = torch.rand(3, 48, 48, 3, generator=torch.Generator().manual_seed(0))  # resized to the tiny 32 px
    one = harness.run(pack["BFRVSPBFRRestore"], vspbfr=vspbfr, image=image, seed=7, batch_size=3).args[0]
    codes = harness.run(pack["BFRVSPBFRStyleEncoder"], vspbfr=vspbfr, image=image, batch_size=3).args[0]
    assert codes.shape == (3, vspbfr.decoder.n_latent, vspbfr.decoder.style_dim) and codes.device.type == "cpu"
    den = harness.run(pack["BFRVSPBFRCodeDiffuser"], vspbfr=vspbfr, codes=codes, seed=7).args[0]
    bank = harness.run(pack["BFRVSPBFRStyleGANBank"], vspbfr=vspbfr, codes=den, seed=7, batch_size=1).args[0]
    four = harness.run(pack["BFRVSPBFRSMARTRestorer"], vspbfr=vspbfr, image=image, codes=den, bank=bank, seed=7,
                       batch_size=3).args[0]
    assert one.shape == four.shape == (3, 32, 32, 3)
    # Same seeds, same streams: the graphs agree. (The bank ran one face at a time: per-face noise streams make
    # that irrelevant. Encoder and diffuser chunks match, because random-weight diffusers amplify the
    # rounding differences of other batch sizes ~1e4-fold, see tests/test_vspbfr_pipeline.py.)
    torch.testing.assert_close(four, one, atol=1e-5, rtol=0)
    other = harness.run(pack["BFRVSPBFRRestore"], vspbfr=vspbfr, image=image, seed=8, batch_size=2).args[0]
    assert (other - one).abs().max() > 1e-3, "the seed must change the result"
    inv = harness.run(pack["BFRVSPBFRInvertedImage"], vspbfr=vspbfr, codes=den, seed=7, batch_size=2).args[0]
    assert inv.shape == (3, 32, 32, 3) and inv.min() >= 0 and inv.max() <= 1


def test_restore_keeps_alpha_and_refuses_whole_photos(setup):
    pack, vspbfr = setup
    from bfr_core.errors import InputError

    rgba = torch.rand(1, 32, 32, 4)
    out = harness.run(pack["BFRVSPBFRRestore"], vspbfr=vspbfr, image=rgba, seed=0).args[0]
    assert out.shape == (1, 32, 32, 4) and torch.equal(out[..., 3], rgba[..., 3])
    with pytest.raises(InputError, match="FaceDetectCrop"):
        harness.run(pack["BFRVSPBFRRestore"], vspbfr=vspbfr, image=torch.rand(1, 40, 64, 3), seed=0)


def test_loader_reports_a_missing_file_clearly(setup):
    pack, _ = setup
    from bfr_core.errors import WeightsError

    node = pack["BFRVSPBFRLoader"]
    schema = node.define_schema()
    for inp in schema.inputs[:3]:
        assert inp.options[0].endswith("(auto-download)")
    with pytest.raises(WeightsError, match="not found"):
        node.execute(style_encoder="missing.safetensors", code_diffuser="missing.safetensors",
                     restorer="missing.safetensors", precision="fp32", sampler="x0 (released)")

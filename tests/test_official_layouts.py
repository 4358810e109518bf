"""Every official checkpoint layout is recognised by the loader and fits our models exactly.

The fixtures in ``tests/fixtures/official_layouts/`` list every tensor (key and shape) of the official files,
nested as the released files nest them. Here a checkpoint with exactly those keys and shapes (meta tensors:
no memory) goes through the loader's detection; each architecture the registry expects is found at the right
prefix, its config is inferred from the shapes, and the model built from it has exactly those keys and shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bfr_core.weights import architectures as archs
from bfr_core.weights import loader
from bfr_core.weights.files import Checkpoint, flatten_checkpoint
from bfr_core.weights.registry import find_by_filename

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "official_layouts").glob("*.json"))


def official_checkpoint(fixture: dict) -> Checkpoint:
    if isinstance(fixture["tensors"], dict):  # flattened keys, file nesting kept
        tensors = fixture["tensors"]
    else:  # container path + key prefix + keys
        head = "".join(f"{c}." for c in fixture["container"]) + fixture["key_prefix"]
        tensors = {head + k: shape for k, shape in fixture["tensors"]}
    return Checkpoint({k: torch.empty(shape, device="meta") for k, shape in tensors.items()})


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_official_layout_is_detected_and_fits_exactly(path):
    fixture = json.loads(path.read_text())
    entry = find_by_filename(fixture["file"])
    assert entry is not None, f"{fixture['file']} is not in the registry"
    ckpt = official_checkpoint(fixture)
    found = {}
    for m in archs.detect(ckpt):
        found.setdefault(m.arch.name, m)  # best prefix first
    assert set(entry.architectures) <= set(found), f"expected {entry.architectures}, detected {sorted(found)}"
    for name in entry.architectures:
        match = found[name]
        sd = match.state_dict(ckpt)
        config = match.arch.config_from(sd)
        with torch.device("meta"):
            model = match.arch.model_class()(config)
        report = archs.compare_state_dict(model, sd)
        assert report.ok, f"{name}: {report.format()}"
    if fixture["file"] == "restoration_net.pt":
        assert found["vspbfr_restoration_net"].prefix == "g_ema.", "inference must use the EMA weights"


def test_e4e_file_with_official_nesting_loads_both_models(tmp_path):
    """A (tiny) style_encoder_decoder.pt nested as released: state_dict/encoder., decoder., latent_avg, opts."""
    from tests.vspbfr_tiny import build

    enc, dec = build("e4e"), build("stylegan2", seed=1)
    enc_sd = {k: v for k, v in enc.state_dict().items() if k != "latent_avg"}
    latent_avg = torch.randn(enc.latent_avg.shape)
    path = tmp_path / "style_encoder_decoder.pt"
    torch.save({
        "state_dict": {**{f"encoder.{k}": v for k, v in enc_sd.items()}, **{f"decoder.{k}": v for k, v in dec.state_dict().items()}},
        "latent_avg": latent_avg,
        "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 64, "start_from_latent_avg": True},
    }, path)
    e = loader.load_model(path, "vspbfr_e4e_encoder")
    g = loader.load_model(path, "stylegan2_generator")
    assert torch.equal(e.model.latent_avg, latent_avg)
    for k, v in enc_sd.items():
        assert torch.equal(e.model.state_dict()[k], v), k
    for k, v in dec.state_dict().items():
        assert torch.equal(g.model.state_dict()[k], v), k
    assert e.entry is not None and e.entry.id == "vspbfr-style-encoder" and "Non-commercial" in e.licence_notice
    with pytest.raises(Exception, match="several models"):
        loader.load_model(path)


def test_training_checkpoint_loads_ema_generator_and_discriminator(tmp_path):
    from tests.vspbfr_tiny import build

    g_ema, g_raw, d = build("restorer", seed=2), build("restorer", seed=3), build("discriminator", seed=4)
    path = tmp_path / "restoration_net.pt"
    torch.save({"g": g_raw.state_dict(), "g_ema": g_ema.state_dict(), "d": d.state_dict(),
                "g_optim": {"state": {}}, "args": __import__("argparse").Namespace(size=32), "iter": 7}, path)
    loaded = loader.load_model(path, "vspbfr_restoration_net")
    for k, v in g_ema.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    disc = loader.load_model(path, "vspbfr_discriminator")
    assert torch.equal(disc.model.final_linear[1].weight, d.final_linear[1].weight)


def test_code_diffuser_file_nesting(tmp_path):
    from tests.vspbfr_tiny import build

    cd = build("code_diffuser")
    path = tmp_path / "code_diffuser.pt"
    torch.save({"att_mapper": cd.state_dict(), "mapper_optim": {}, "iter": 1, "best_fid": 3.0}, path)
    loaded = loader.load_model(path)
    assert loaded.architecture == "vspbfr_code_diffuser"
    for k, v in cd.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_flatten_keeps_official_nesting_names():
    ckpt = flatten_checkpoint({"att_mapper": {"att_mapper.0.w": torch.zeros(1)}})
    assert list(ckpt.tensors) == ["att_mapper.att_mapper.0.w"]

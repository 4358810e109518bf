"""The compact restorer: any input size (edge padding), config inference, loader detection, the pipeline, the
built-in weights file (overridable with BFR_COMPACT_WEIGHTS, a clear error when missing) and the ComfyUI nodes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bfr_core.errors import InputError, WeightsError
from bfr_core.models.compact import CompactRestorer, CompactRestorerConfig, config_from_state_dict
from tests.tiny_weights import tiny_compact


def _same_sizes(a: CompactRestorerConfig, b: CompactRestorerConfig) -> bool:
    """Equal apart from ``size`` (the crop size it was trained for, which shapes cannot tell)."""
    return dataclasses.replace(a, size=0) == dataclasses.replace(b, size=0)


@torch.no_grad()
def test_any_size_is_padded_at_the_edges_and_cropped_back():
    model = tiny_compact()
    assert model.config.multiple == 4
    for h, w in ((32, 32), (37, 29), (5, 3)):
        x = torch.rand(2, 3, h, w) * 2 - 1
        y = model(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        padded = F.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
        torch.testing.assert_close(y, model(padded)[..., :h, :w])
    torch.testing.assert_close(model(x[:1]), y[:1])  # faces are independent of each other
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 4, 8, 8))


def test_default_config_is_the_shipped_size():
    model = CompactRestorer()
    n = sum(p.numel() for p in model.parameters())
    assert 4.0e6 < n < 4.6e6, n  # the model card's 4.3 M parameters
    assert model.config.multiple == 32


@pytest.mark.parametrize("config", [
    CompactRestorerConfig(),
    CompactRestorerConfig(unshuffle=2, width=8, enc_blocks=(1, 3), middle_blocks=2, dec_blocks=(2, 1), expand=3, tail_channels=5),
], ids=["default", "custom"])
def test_config_from_state_dict_round_trip(config):
    inferred = config_from_state_dict(CompactRestorer(config).state_dict())
    assert _same_sizes(inferred, config)
    with pytest.raises(InputError, match="not a compact-restorer state dict"):
        config_from_state_dict({"intro.weight": torch.zeros(1)})


def test_loader_detects_the_architecture_from_bare_and_prefixed_files(tmp_path):
    from bfr_core.weights import load_checkpoint, load_model, save_checkpoint, save_model
    from bfr_core.weights.architectures import detect

    model = tiny_compact()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    save_model(model, tmp_path / "ours.safetensors", "compact_restorer")
    loaded = load_model(tmp_path / "ours.safetensors")
    assert loaded.architecture == "compact_restorer" and loaded.model.config == model.config  # size kept from metadata
    for prefix in ("", "ema.", "model."):  # a bare trainer checkpoint: the config comes from the shapes
        path = tmp_path / f"bare_{prefix or 'none'}.safetensors"
        save_checkpoint({prefix + k: v for k, v in model.state_dict().items()}, path)
        assert [m.arch.name for m in detect(load_checkpoint(path))] == ["compact_restorer"]
        bare = load_model(path, "compact_restorer").model
        assert _same_sizes(bare.config, model.config)
        with torch.no_grad():
            torch.testing.assert_close(bare(x), model(x))
    damaged = {k: v for k, v in model.state_dict().items() if k != "decoders.0.0.conv2.weight"}
    save_checkpoint(damaged, tmp_path / "damaged.safetensors")
    with pytest.raises(WeightsError, match=r"decoders\.0\.0\.conv2\.weight"):
        load_model(tmp_path / "damaged.safetensors", "compact_restorer")


def test_pipeline_batches_reports_progress_and_checks_its_input():
    from bfr_core.pipelines.base import FaceRestorer
    from bfr_core.pipelines.compact import CompactPipeline

    pipe = CompactPipeline(tiny_compact(), device="cpu")
    assert isinstance(pipe, FaceRestorer) and pipe.size == 32 and pipe.name == "compact"
    faces = torch.rand(3, 3, 32, 32) * 2 - 1
    calls = []
    out = pipe.restore_faces(faces, seed=5, batch_size=2, on_progress=lambda d, t, p: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    assert out.shape == faces.shape and out.abs().max() <= 1
    torch.testing.assert_close(out, pipe.restore_faces(faces, seed=0, batch_size=1))  # no randomness, no batch effect
    assert pipe.restore_faces(faces[:0]).shape == (0, 3, 32, 32)
    with pytest.raises(InputError, match="32, 32"):
        pipe.restore_faces(torch.zeros(1, 3, 64, 64))


def test_builtin_weights_override_and_clear_error_when_missing(tmp_path, monkeypatch):
    from bfr_core.pipelines import compact
    from bfr_core.weights import save_model

    monkeypatch.setattr(compact, "BUILTIN_WEIGHTS", tmp_path / "absent" / "compact_restorer.safetensors")
    monkeypatch.delenv(compact.BUILTIN_ENV, raising=False)
    with pytest.raises(WeightsError, match="built-in compact restorer is missing.*not in this installation"):
        compact.load_compact()
    monkeypatch.setenv(compact.BUILTIN_ENV, str(tmp_path / "nope.safetensors"))
    with pytest.raises(WeightsError, match=r"\$BFR_COMPACT_WEIGHTS names .*nope.safetensors"):
        compact.builtin_weights()
    save_model(tiny_compact(), tmp_path / "tiny.safetensors", "compact_restorer")
    monkeypatch.setenv(compact.BUILTIN_ENV, str(tmp_path / "tiny.safetensors"))
    assert compact.load_compact(device="cpu").size == 32


@pytest.fixture
def pack(tmp_path, monkeypatch):
    """The pack on the stand-in, a tiny compact model in models/bfr and as the built-in weights."""
    from tests import comfy_harness as harness
    from tests.tiny_weights import write_compact

    models = tmp_path / "comfy" / "models" / "bfr"
    models.mkdir(parents=True)
    write_compact(models)
    monkeypatch.setenv("BFR_COMPACT_WEIGHTS", str(models / "tiny_compact.safetensors"))
    return harness.load_pack(tmp_path / "comfy")


def test_comfy_loader_offers_the_builtin_model_and_restore_faces_takes_it(pack):
    from nodes.compact import BUILTIN
    from tests import comfy_harness as harness

    loader = pack["BFRCompactLoader"]
    options = next(i for i in loader.define_schema().inputs if i.id == "model").options
    assert options[0] == BUILTIN and "tiny_compact.safetensors" in options
    restorer_input = next(i for i in pack["BFRRestoreFaces"].define_schema().inputs if i.id == "restorer")
    assert "BFR_COMPACT" in restorer_input.get_io_type().split(",")
    pipe = harness.run(loader, model=BUILTIN, precision="fp32").args[0]
    assert pipe.size == 32
    crops = torch.rand(2, 48, 48, 4)  # RGBA crops at another size are resized; alpha comes back
    out = harness.run(pack["BFRCompactRestore"], compact=pipe, image=crops, batch_size=1).args[0]
    assert out.shape == (2, 32, 32, 4) and out.min() >= 0 and out.max() <= 1
    from_file = harness.run(loader, model="tiny_compact.safetensors", precision="fp32").args[0]
    torch.testing.assert_close(from_file.restore_faces(torch.zeros(1, 3, 32, 32)), pipe.restore_faces(torch.zeros(1, 3, 32, 32)))


def test_loader_keeps_one_model_and_reloads_a_file_replaced_under_the_same_name(pack, tmp_path):
    """The loader cache (nodes.common.resident) is keyed by the file's identity, not only by its name."""
    import os

    from bfr_core.weights import save_model
    from tests import comfy_harness as harness

    path = tmp_path / "comfy" / "models" / "bfr" / "tiny_compact.safetensors"
    loader = pack["BFRCompactLoader"]
    first = harness.run(loader, model=path.name, precision="fp32").args[0]
    assert harness.run(loader, model=path.name, precision="fp32").args[0] is first
    changed = tiny_compact()
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    save_model(changed, path, "compact_restorer")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime even on coarse clocks
    second = harness.run(loader, model=path.name, precision="fp32").args[0]
    assert second is not first
    torch.testing.assert_close(next(second.model.parameters()), next(changed.parameters()))

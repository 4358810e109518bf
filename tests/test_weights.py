"""The weights path: safe reading, canonicalisation, detection, strict loading, conversion, downloads."""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bfr_core.errors import DownloadError, UnsafeCheckpointError, WeightsError
from bfr_core.weights import architectures as archs
from bfr_core.weights import fetch as dl
from bfr_core.weights import files, loader, registry

from . import hub_server
from .tiny_arch import TINY, TinyNet, TinyNetConfig


@pytest.fixture
def tiny_arch():
    archs.register(TINY, replace=True)
    yield TINY
    archs.unregister(TINY.name)


def tiny_state(channels=8, depth=2, seed=0):
    torch.manual_seed(seed)
    return TinyNet(TinyNetConfig(channels, depth)).state_dict()


class _Exploit:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch_zip", "legacy_pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.ones(2)}, "x": _Exploit(marker)}
    if fmt == "torch_zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeCheckpointError) as err:
        files.load_checkpoint(path)
    assert not marker.exists(), "unpickling ran the payload"
    assert "could run code" in str(err.value)
    if fmt == "torch_zip":
        assert "os.system" in str(err.value) or "posix.system" in str(err.value)
    # the loader path refuses it too, and leaves no converted copy behind
    with pytest.raises(UnsafeCheckpointError):
        loader.open_checkpoint(path)
    assert not marker.exists()
    assert not list((dl.bfr_home() / "converted").glob("*")) if (dl.bfr_home() / "converted").exists() else True


def test_official_style_nesting_is_flattened_and_optimisers_dropped(tmp_path):
    sd = tiny_state()
    path = tmp_path / "train.pt"
    torch.save({
        "g": sd, "g_ema": sd, "d": {"w": torch.zeros(3)},
        "g_optim": {"state": {0: {"exp_avg": torch.zeros(1000)}}},
        "args": argparse.Namespace(size=512, lr=0.002, name="x"),
        "iter": 5, "best_fid": __import__("numpy").float64(12.5),
    }, path)
    ckpt = files.load_checkpoint(path)
    assert "g_ema.head.weight" in ckpt.tensors and "d.w" in ckpt.tensors
    assert not any(k.startswith("g_optim") for k in ckpt.tensors)
    assert ckpt.meta["args.size"] == 512 and ckpt.meta["iter"] == 5 and ckpt.meta["best_fid"] == 12.5
    assert ckpt.sub("g_ema.").keys() == sd.keys()


def test_missing_empty_truncated_and_unknown_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        files.load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        files.load_checkpoint(tmp_path / "empty.pth")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": tiny_state()}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        files.load_checkpoint(cut)
    st = tmp_path / "cut.safetensors"
    files.save_checkpoint(tiny_state(), tmp_path / "full.safetensors")
    st.write_bytes((tmp_path / "full.safetensors").read_bytes()[:300])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        files.load_checkpoint(st)
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported checkpoint format"):
        files.load_checkpoint(tmp_path / "w.onnx")


def test_detection_prefers_ema_and_strips_module_prefix(tmp_path, tiny_arch):
    ema, raw = tiny_state(seed=1), tiny_state(seed=2)
    ckpt = files.flatten_checkpoint({"g": raw, "g_ema": ema})
    matches = archs.detect(ckpt)
    assert [m.prefix for m in matches] == ["g_ema.", "g."]
    assert torch.equal(matches[0].state_dict(ckpt)["head.weight"], ema["head.weight"])

    ddp = files.flatten_checkpoint({f"module.{k}": v for k, v in ema.items()})
    (m,) = archs.detect(ddp)
    assert set(m.state_dict(ddp)) == set(ema)

    nested = files.flatten_checkpoint({"state_dict": {f"module.{k}": v for k, v in ema.items()}})
    (m,) = archs.detect(nested)
    assert m.prefix == "state_dict." and set(m.state_dict(nested)) == set(ema)


def test_build_infers_config_and_loads_exactly(tmp_path, tiny_arch):
    sd = tiny_state(channels=6, depth=3)
    path = tmp_path / "tiny.pth"
    torch.save({"params_ema": sd}, path)
    loaded = loader.load_model(path)
    assert loaded.architecture == "tiny_net" and loaded.config == TinyNetConfig(6, 3)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    # converted once: a safetensors copy keyed by the file hash now exists and is used next time
    converted = list((dl.bfr_home() / "converted").glob("tiny-*.safetensors"))
    assert len(converted) == 1
    loader.unload_all()
    again = loader.load_model(path)
    assert torch.equal(again.model.head.weight, loaded.model.head.weight)
    # the in-memory cache returns the same object for the same file/device/dtype
    assert loader.load_model(path) is again


def test_strict_load_reports_missing_unexpected_and_mismatched(tiny_arch):
    sd = tiny_state()
    model = TinyNet(TinyNetConfig())
    bad = dict(sd)
    bad.pop("tail.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["head.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(WeightsError) as err:
        archs.load_state_dict_checked(model, bad)
    msg = str(err.value)
    assert "1 missing keys" in msg and "tail.bias" in msg
    assert "1 unexpected keys" in msg and "extra.weight" in msg
    assert "head.weight file[8, 3, 5, 5] vs model[8, 3, 3, 3]" in msg
    report = archs.load_state_dict_checked(model, bad, strict=False)
    assert not report.ok and report.missing == ["tail.bias"]


def test_wrong_architecture_file_is_a_clear_error(tmp_path, tiny_arch):
    path = tmp_path / "other.safetensors"
    files.save_checkpoint({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match="does not contain any known architecture"):
        loader.load_model(path)


def test_save_model_roundtrip_uses_stored_config(tmp_path, tiny_arch):
    torch.manual_seed(3)
    model = TinyNet(TinyNetConfig(5, 1))
    path = loader.save_model(model, tmp_path / "mine.safetensors", "tiny_net", {"steps": 10})
    ckpt = files.load_checkpoint(path)
    assert ckpt.meta["bfr_arch"] == "tiny_net" and ckpt.meta["steps"] == 10
    loaded = loader.load_model(path)
    assert loaded.config == TinyNetConfig(5, 1)
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(loaded.model(x), model.eval()(x))


def test_convert_to_safetensors_drops_optimiser_and_refuses_overwrite(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save({"g_ema": tiny_state(), "g_optim": {"lr": torch.zeros(10)}, "args": argparse.Namespace(a=1)}, src)
    dst = files.convert_to_safetensors(src)
    ckpt = files.load_checkpoint(dst)
    assert all(k.startswith("g_ema.") for k in ckpt.tensors) and ckpt.meta["args.a"] == 1
    before = dst.read_bytes()
    with pytest.raises(WeightsError, match="already exists"):
        files.convert_to_safetensors(src, dst)
    assert dst.read_bytes() == before  # never overwritten without asking


# ------------------------------------------------------------------------------------------ downloads

@pytest.fixture
def fake_hub(monkeypatch):
    hub = hub_server.FakeHub()
    server = hub_server.start(hub)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    server.shutdown()


def _tiny_bytes(tmp_path, name="tiny.pth") -> bytes:
    path = tmp_path / name
    torch.save({"state_dict": tiny_state()}, path)
    return path.read_bytes()


@pytest.fixture
def entry_factory(monkeypatch):
    def make(**kw):
        base = registry.KnownCheckpoint(
            id="test-tiny", filename="tiny.pth", sources=(registry.HubSource("acme/tiny", "weights/tiny.pth"),),
            architectures=("tiny_net",), licence="MIT", description="test")
        entry = replace(base, **kw)
        monkeypatch.setitem(registry.KNOWN, entry.id, entry)
        return entry
    return make


def test_hub_download_verifies_pins_and_works_offline(tmp_path, fake_hub, entry_factory, tiny_arch, monkeypatch):
    data = _tiny_bytes(tmp_path)
    fake_hub.add("acme/tiny", "weights/tiny.pth", data)
    entry = entry_factory()
    seen = []
    path = dl.download(entry, progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == data
    assert Path(os.environ["HF_HUB_CACHE"]) in path.parents  # in the Hub cache, not a folder of ours
    assert seen and seen[-1][0] == len(data)
    assert any(m == "GET" and "/acme/tiny/resolve/main/weights/tiny.pth" in p for m, p in fake_hub.requests)
    assert dl.expected_sha256(entry) == hashlib.sha256(data).hexdigest()  # pinned at first use

    # offline: served from the cache without a single request
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = loader.load_model("test-tiny")
    assert loaded.architecture == "tiny_net" and fake_hub.requests == []
    assert "test-tiny: MIT" in loaded.licence_notice


def test_hub_space_and_pinned_revision_urls(tmp_path, fake_hub, entry_factory):
    data = _tiny_bytes(tmp_path)
    fake_hub.add("org/space", "weights/diffusion/tiny.pth", data, repo_type="space")
    rev = "a" * 40
    entry = entry_factory(sources=(registry.HubSource("org/space", "weights/diffusion/tiny.pth", rev, "space"),))
    path = dl.download(entry)
    assert path.read_bytes() == data
    assert any(f"/spaces/org/space/resolve/{rev}/weights/diffusion/tiny.pth" in p for _, p in fake_hub.requests)


def test_offline_and_not_cached_names_the_fix(fake_hub, entry_factory, monkeypatch):
    entry_factory()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as err:
        dl.resolve("test-tiny")
    assert "HF_HUB_OFFLINE" in str(err.value) and "bfr download test-tiny" in str(err.value)
    assert fake_hub.requests == []


def test_truncated_hub_download_is_an_error(tmp_path, fake_hub, entry_factory):
    key = fake_hub.add("acme/tiny", "weights/tiny.pth", _tiny_bytes(tmp_path))
    fake_hub.truncate.add(key)
    entry_factory()
    with pytest.raises(DownloadError, match="download from .* failed"):
        dl.download("test-tiny")
    blobs = list(Path(os.environ["HF_HUB_CACHE"]).rglob("blobs/*"))
    assert not [b for b in blobs if not b.name.endswith(".incomplete")]  # nothing usable left behind


def test_wrong_hash_is_refused_and_removed(tmp_path, fake_hub, entry_factory):
    fake_hub.add("acme/tiny", "weights/tiny.pth", _tiny_bytes(tmp_path))
    entry_factory(sha256="0" * 64)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        dl.download("test-tiny")
    assert not [b for b in Path(os.environ["HF_HUB_CACHE"]).rglob("blobs/*")]


def test_missing_file_on_the_hub(fake_hub, entry_factory):
    entry_factory()
    with pytest.raises(DownloadError, match="missing from acme/tiny"):
        dl.download("test-tiny")


def test_url_source_download_truncation_and_fallback(tmp_path, fake_hub, entry_factory):
    data = _tiny_bytes(tmp_path)
    fake_hub.files["raw/tiny.pth"] = data
    entry = entry_factory(sources=(registry.HubSource("acme/missing", "tiny.pth"), registry.UrlSource(f"{fake_hub.url}/raw/tiny.pth")))
    path = dl.download(entry)  # the Hub source 404s, the URL works
    assert path.read_bytes() == data and path.parent == dl.bfr_home() / "downloads"
    path.unlink()
    fake_hub.cut.add("raw/tiny.pth")  # the connection drops mid-body
    with pytest.raises(DownloadError, match="failed|cut off"):
        dl.download(entry)
    assert not list((dl.bfr_home() / "downloads").glob("*tiny*"))  # no partial file left
    fake_hub.cut.clear()
    fake_hub.truncate.add("raw/tiny.pth")  # a short but self-consistent answer: caught by the hash pinned at first use
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        dl.download(entry)
    assert not list((dl.bfr_home() / "downloads").glob("*tiny*"))


def test_resolve_finds_registry_files_in_model_folders(tmp_path, entry_factory, monkeypatch):
    folder = tmp_path / "models" / "bfr"
    folder.mkdir(parents=True)
    (folder / "tiny.pth").write_bytes(_tiny_bytes(tmp_path, "x.pth"))
    entry_factory()
    monkeypatch.setenv("BFR_MODELS_DIR", str(folder))
    path, entry = dl.resolve("test-tiny", allow_download=False)
    assert path == folder / "tiny.pth" and entry.id == "test-tiny"
    path2, _ = dl.resolve("tiny.pth")
    assert path2 == path
    assert dl.expected_sha256(registry.KNOWN["test-tiny"]) is None, "a file placed by hand must not be pinned"
    with pytest.raises(WeightsError, match="neither a file nor a known checkpoint id"):
        dl.resolve("no-such-model")


def test_registry_entries_are_complete():
    for entry in registry.KNOWN.values():
        assert entry.sources and entry.architectures and entry.licence and entry.description, entry.id
        for src in entry.sources:
            if isinstance(src, registry.HubSource):
                assert src.repo_type in ("model", "space")
    assert registry.known("vspbfr-restoration-net").sources[0].repo_id == "Wanglong2/VSPBFR"
    assert registry.known("difface-ddpm-ffhq512").sources[0].repo_type == "space"
    assert registry.known("difface-ddpm-ffhq512").non_commercial

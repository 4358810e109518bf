"""The `bfr` command line: convert, info, download, degrade."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bfr_core.cli import main
from bfr_core.imageio import load_image, save_image
from bfr_core.weights import architectures as archs
from bfr_core.weights import registry

from tests import hub_server
from tests.tiny_arch import TINY, TinyNet, TinyNetConfig


@pytest.fixture
def tiny_arch():
    archs.register(TINY, replace=True)
    yield
    archs.unregister(TINY.name)


def test_bfr_help_is_instant_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "bfr_core.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("degrade", "convert", "info", "download"):
        assert cmd in out.stdout


def test_convert_and_info(tmp_path, tiny_arch, capsys):
    src = tmp_path / "official.pth"
    torch.save({"g_ema": TinyNet(TinyNetConfig(4, 1)).state_dict(), "g_optim": {"x": torch.zeros(3)}}, src)
    assert main(["convert", str(src)]) == 0
    dst = tmp_path / "official.safetensors"
    assert capsys.readouterr().out.strip() == str(dst)
    assert main(["convert", str(src)]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["info", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architectures"][0]["architecture"] == "tiny_net" and info["architectures"][0]["prefix"] == "g_ema."
    assert main(["info", str(tmp_path / "missing.pth")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["info", "--list"]) == 0
    assert "vspbfr-restoration-net" in capsys.readouterr().out


def test_download_through_the_loopback_hub(tmp_path, monkeypatch, capsys):
    hub = hub_server.FakeHub()
    server = hub_server.start(hub)
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = tmp_path / "w.pth"
        torch.save({"w": torch.ones(3)}, path)
        hub.add("acme/w", "w.pth", path.read_bytes())
        entry = registry.KnownCheckpoint(id="cli-w", filename="w.pth", sources=(registry.HubSource("acme/w", "w.pth"),),
                                         architectures=("tiny_net",), licence="MIT", description="t")
        monkeypatch.setitem(registry.KNOWN, entry.id, entry)
        assert main(["download", "cli-w", "-q"]) == 0
        assert capsys.readouterr().out.strip().endswith("w.pth")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        hub.files.clear()
        assert main(["download", "cli-w", "-q"]) == 0  # served from the cache
    finally:
        server.shutdown()


def test_degrade_folder_never_overwrites_and_records_parameters(tmp_path, capsys):
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    for i in range(2):
        save_image(torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(i)), src / f"f{i}.png")
    out = tmp_path / "out"
    assert main(["degrade", str(tmp_path / "in"), "-o", str(out), "--preset", "gpen", "--seed", "3", "--set", "scale=4"]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["sub/f0.png", "sub/f1.png"]
    rows = [json.loads(line) for line in (out / "degradations.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [3, 4] and all(r["scale"] == 4 for r in rows)
    first = load_image(out / "sub" / "f0.png")
    # a second run skips existing outputs instead of overwriting them
    assert main(["degrade", str(tmp_path / "in"), "-o", str(out), "--preset", "gpen", "--seed", "9"]) == 0
    assert torch.equal(load_image(out / "sub" / "f0.png"), first)
    capsys.readouterr()
    assert main(["degrade", str(tmp_path / "in"), "-o", str(out), "--overwrite", "--set", "scale=banana"]) == 2
    assert "scale" in capsys.readouterr().err
    assert torch.equal(load_image(out / "sub" / "f0.png"), first)  # a failed run leaves outputs alone
    assert main(["degrade", "--describe", "--preset", "gfpgan"]) == 0
    assert "jpeg_quality" in capsys.readouterr().out

"""The compact-restorer stage (held-out faces, its own degradation, export that bfr_core loads) and its evaluation
script ``python -m trainer.compact_eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from .test_trainer import CONFIGS, SHARED_HQ, load_cfg, make_faces, tiny_overrides

TINY = "compact_restorer_tiny.yaml"


def _installed_lpips() -> Path | None:
    """The user's converted LPIPS-alex file, looked up at import (before the tests isolate BFR_HOME)."""
    from bfr_core.metrics.assets import LPIPS_FILENAME, find_converted

    return find_converted(LPIPS_FILENAME.format(net="alex"))


INSTALLED_LPIPS = _installed_lpips()


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """A clean Accelerate state per test, and one thread (the models are tiny, the cores shared)."""
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.set_num_threads(threads)


def add_held_out(folder: Path, size: int = 40) -> Path:
    """Synthetic faces under the names of :data:`trainer.compact_eval.HELD_OUT` (one of them in a subfolder)."""
    from PIL import Image

    from trainer.compact_eval import HELD_OUT

    rng = np.random.default_rng(1)
    for i, name in enumerate(HELD_OUT):
        sub = folder / ("held" if i == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:size, 0:size] / size
        img = 0.5 + 0.3 * np.sin(6 * xx + 4 * yy + i)[..., None] * rng.uniform(0.5, 1.0, size=(3,))
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(sub / name)
    return folder


def compact_overrides(out: Path, root: Path, **extra) -> list[str]:
    """The tiny compact config on ``root`` (the stage degrades its crops itself: data.degradation stays none)."""
    return tiny_overrides(out, root, **{"data.degradation": "none", "data.size": 128, "data.max_images": 8, **extra})


# ------------------------------------------------------------------------------------------------ the stage


def test_held_out_dataset_validates_on_exactly_the_evaluation_faces(tmp_path):
    from trainer.compact_eval import HELD_OUT
    from trainer.config import ConfigError, DataConfig
    from trainer.registry import DATASETS

    build = DATASETS.get("face_folder_held_out")
    root = add_held_out(make_faces(tmp_path / "faces", 6))
    train, val = build(DataConfig(root=str(root), size=32, max_images=4, type="face_folder_held_out"), 0, None)
    assert sorted(p.name for p, _ in val.files) == sorted(HELD_OUT) and "held/00008.png" in {r for _, r in val.files}
    assert len(train) == 4 and not {p.name for p, _ in train.files} & set(HELD_OUT)  # max_images limits training only
    assert not val.hflip and val.stream == "val" and val[(0, 0)]["hq"].shape == (3, 32, 32)

    only_held_out = add_held_out(tmp_path / "held_out_only")
    with pytest.raises(ConfigError, match="every face under .* is one of the held-out evaluation faces"):
        build(DataConfig(root=str(only_held_out), size=32, type="face_folder_held_out"), 0, None)


def test_data_degradation_must_be_none(tmp_path, caplog):
    from trainer.train import main

    root = make_faces(tmp_path / "faces", 4)
    argv = ["--config", str(CONFIGS / TINY), *compact_overrides(tmp_path / "run", root, **{"data.degradation": "simple"})]
    assert main(argv) == 2
    assert "the compact stage degrades its crops itself: set data.degradation: none" in caplog.text


@pytest.mark.data
def test_tiny_compact_restorer_learns_on_real_faces_and_exports_for_bfr_core(tmp_path):
    from bfr_core.pipelines.compact import load_compact
    from bfr_core.weights import load_checkpoint, load_model
    from bfr_core.weights.architectures import detect
    from trainer import compact_eval
    from trainer.compact_eval import HELD_OUT
    from trainer.loop import Trainer

    if not SHARED_HQ.is_dir():
        pytest.skip(f"real faces not found at {SHARED_HQ} (they live beside the repository, never inside it)")
    out = tmp_path / "compact"
    steps = 32
    cfg = load_cfg(TINY, compact_overrides(out, SHARED_HQ, max_steps=steps, **{
        "log.every": 8, "log.sample_every": steps, "log.val_every": 8, "checkpoint.every": steps}))
    trainer = Trainer(cfg)
    assert sorted(p.name for p, _ in trainer.val_set.files) == sorted(HELD_OUT)
    assert len(trainer.train_set) == 8 and not {p.name for p, _ in trainer.train_set.files} & set(HELD_OUT)
    result = trainer.run()

    # Training crops vary a lot from batch to batch; validation sees the same degraded held-out faces each time.
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    val = [h for h in result.history if "val/loss" in h]
    assert len(losses) == len(val) == steps // 8 and losses[-1] < losses[0], losses
    assert val[-1]["val/loss"] < 0.85 * val[0]["val/loss"], [h["val/loss"] for h in val]
    assert val[-1]["val/psnr_restored"] > val[0]["val/psnr_restored"] + 0.5, val
    assert val[-1]["val/psnr_degraded"] == val[0]["val/psnr_degraded"]  # the same degraded faces each time
    assert result.metrics == {k: v for k, v in val[-1].items() if k != "step"}
    assert (out / "samples" / f"step-{steps:08d}.png").is_file()

    path = out / "export" / "model.safetensors"
    assert [d.arch.name for d in detect(load_checkpoint(path))] == ["compact_restorer"]
    loaded = load_model(path, cache=False)
    assert loaded.architecture == "compact_restorer" and loaded.model.config.size == 128 and loaded.model.config.width == 8
    ema = {k: v.half().float() for k, v in trainer.ema.module.state_dict().items()}  # the export is the fp16 EMA
    assert all(torch.equal(v.float(), ema[k]) for k, v in loaded.model.state_dict().items())
    pipe = load_compact(path, device="cpu", dtype="fp32")
    face = torch.rand(2, 3, 128, 128) * 2 - 1
    restored = pipe.restore_faces(face, batch_size=1)
    assert pipe.size == 128 and restored.shape == face.shape and restored.abs().max() <= 1
    # compact_eval takes the export as it is, at the size it was trained for
    report = tmp_path / "eval.json"
    assert compact_eval.main(["--weights", str(path), "--data", str(SHARED_HQ), "--lpips", "off", "--threads", "0",
                              "--json", str(report)]) == 0
    quality = json.loads(report.read_text())["quality"]
    assert set(quality) == {"x4", "x8"} and all(math.isfinite(v) for row in quality.values() for v in row.values())


# ---------------------------------------------------------------------------------------------- compact_eval


def tiny_compact_file(folder: Path, size: int = 64) -> Path:
    """A random compact restorer of a few thousand parameters for ``size``² faces."""
    from bfr_core.models.compact import CompactRestorer, CompactRestorerConfig
    from bfr_core.weights import save_model

    torch.manual_seed(0)
    config = CompactRestorerConfig(size=size, width=4, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), tail_channels=4)
    return save_model(CompactRestorer(config), folder / "tiny_compact.safetensors", "compact_restorer")


def test_compact_eval_reports_quality_and_cpu_time(tmp_path, capsys):
    from trainer import compact_eval

    if INSTALLED_LPIPS is None:  # compact_eval has no random-weight LPIPS: it reports real LPIPS or none
        pytest.skip("LPIPS-alex weights not installed: run `python -m bfr_core.metrics lpips --download` once")
    weights, data, report = tiny_compact_file(tmp_path), add_held_out(tmp_path / "hq", size=48), tmp_path / "metrics.json"
    assert compact_eval.main(["--weights", str(weights), "--data", str(data), "--lpips", str(INSTALLED_LPIPS),
                              "--threads", "1", "--json", str(report)]) == 0
    results = json.loads(report.read_text())
    assert results["faces"] == list(compact_eval.HELD_OUT) and results["weights"] == str(weights)
    assert set(results["quality"]) == {"x4", "x8"}
    for row in results["quality"].values():
        assert set(row) == {"psnr_degraded", "psnr_restored", "lpips_degraded", "lpips_restored"}
        assert all(math.isfinite(v) for v in row.values()) and 10 < row["psnr_degraded"] < 60, row
        assert 0 <= row["lpips_degraded"] < 1 and 0 <= row["lpips_restored"] < 1, row
    timing = results["cpu_time"]
    assert timing["size"] == 64 and timing["threads"] == 1 and timing["wall_s"] > 0 and timing["cpu_s"] >= 0
    assert "load_average_1min" in timing
    printed = capsys.readouterr().out
    assert "| GFPGAN x8 |" in printed and "CPU time per 64² face, 1 threads" in printed


def test_compact_eval_names_missing_faces_and_reports_without_lpips_or_timing(tmp_path, caplog):
    from trainer import compact_eval

    weights, data = tiny_compact_file(tmp_path), add_held_out(tmp_path / "hq", size=16)
    (data / "celebahq_195650.jpg").unlink()
    assert compact_eval.main(["--weights", str(weights), "--data", str(data), "--threads", "0"]) == 2
    assert "held-out faces missing" in caplog.text and "celebahq_195650.jpg" in caplog.text
    table = compact_eval.report({"quality": {"x4": {"psnr_degraded": 20.0, "psnr_restored": 25.5}}})
    assert table.splitlines()[-1] == "| GFPGAN x4 | 20.00 dB | 25.50 dB | – | – |" and "CPU time" not in table

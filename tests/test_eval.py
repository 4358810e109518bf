"""`bfr eval`: pairing, per-image CSV and summaries, clear errors, reproducible degradation (small generated folders)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from bfr_core.cli import main
from bfr_core.errors import InputError
from bfr_core.evaluate import DEGRADE_MANIFEST, degrade_folder, evaluate, pair_images
from bfr_core.imageio import save_image


def _gt_images(n: int, h: int = 40, w: int = 56, seed: int = 0) -> list[torch.Tensor]:
    """8-bit random images with values in [20, 230] (so a +4 offset never clips)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(20, 231, (1, h, w, 3), generator=g).float() / 255 for _ in range(n)]


@pytest.fixture
def folders(tmp_path):
    """gt/ (PNG and JPEG-named stems in a subfolder) and res/ = gt + 4/255 on every channel, as PNG."""
    gt, res = tmp_path / "gt", tmp_path / "res"
    for i, img in enumerate(_gt_images(3)):
        save_image(img, gt / "sub" / f"{i:03d}.png")
        save_image(img + 4 / 255, res / "sub" / f"{i:03d}.png")
    return gt, res


def test_psnr_of_a_known_offset_and_the_report_files(folders, tmp_path, capsys):
    gt, res = folders
    out = tmp_path / "report"
    assert main(["eval", str(res), "--gt", str(gt), "--metrics", "psnr,psnr_rgb", "--metrics", "ssim",
                 "--device", "cpu", "-o", str(out), "--name", "offset"]) == 0
    printed = capsys.readouterr().out
    assert "| offset | 3 |" in printed and "measured by" in printed
    # RGB: every pixel off by 4 levels → MSE 16. Y (BT.601, BasicSR): the offset is 4 · 219/255 levels.
    want_rgb = 10 * math.log10(255**2 / 16)
    want_y = 20 * math.log10(255 / (4 * 219 / 255))
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["image"] for r in rows] == ["sub/000", "sub/001", "sub/002"]
    for r in rows:
        assert float(r["psnr_rgb"]) == pytest.approx(want_rgb, abs=1e-6)
        assert float(r["psnr"]) == pytest.approx(want_y, abs=1e-3)
        assert 0.9 < float(r["ssim"]) < 1.0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["images"] == 3 and doc["label"] == "offset"
    assert doc["metrics"]["psnr_rgb"]["value"] == pytest.approx(want_rgb, abs=1e-6)
    assert doc["metrics"]["psnr"]["higher_is_better"] and "Y channel" in doc["metrics"]["psnr"]["measured_by"]
    assert doc["settings"]["mode"] == "full-reference" and doc["settings"]["device"] == "cpu"
    md = (out / "summary.md").read_text()
    assert md.splitlines()[0].startswith("| method | images | PSNR↑ (dB)") and "- ssim: SSIM" in md


def test_pairing_ignores_the_suffix_and_reports_unpaired_files(folders):
    gt, res = folders
    (gt / "sub" / "002.png").rename(gt / "sub" / "002.jpg")  # same name, other suffix: still a pair
    assert [p.name for p in pair_images(res, gt)] == ["sub/000", "sub/001", "sub/002"]
    save_image(_gt_images(1)[0], res / "extra.png")
    (gt / "sub" / "000.png").unlink()
    with pytest.raises(InputError, match=r"2 restored image\(s\) without ground truth: extra, sub/000") as e:
        pair_images(res, gt)
    assert "--skip-unpaired" in str(e.value)
    assert [p.name for p in pair_images(res, gt, skip_unpaired=True)] == ["sub/001", "sub/002"]
    save_image(_gt_images(1)[0], gt / "only_gt.png")
    with pytest.raises(InputError, match="ground-truth image\\(s\\) without a restored image: only_gt"):
        pair_images(res, gt)


def test_cli_errors_are_clear(folders, tmp_path, capsys):
    gt, res = folders
    save_image(_gt_images(1, h=40, w=40)[0], res / "sub" / "001.png", overwrite=True)
    assert main(["eval", str(res), "--gt", str(gt), "--metrics", "psnr", "--device", "cpu"]) == 2
    assert "differ in size (sub/001: restored 40×40, ground truth 56×40)" in capsys.readouterr().err
    assert main(["eval", str(res), "--metrics", "psnr", "--device", "cpu"]) == 2  # full reference without --gt
    assert "compare against ground truth" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(res), "--gt", str(gt), "--metrics", "psnr,bogus", "--device", "cpu"]) == 2
    assert "unknown metric" in capsys.readouterr().err
    assert main(["eval", str(res), "--set", "scale=2"]) == 2
    assert "use it with --degrade" in capsys.readouterr().err


def test_no_reference_mode(tmp_path):
    res = tmp_path / "res"
    for i, img in enumerate(_gt_images(2, h=96, w=192)):
        save_image(img, res / f"{i}.png")
    progress = []
    result = evaluate(pair_images(res), device="cpu", batch_size=1, on_progress=lambda *a: progress.append(a))
    assert progress == [(0, 2), (1, 2), (2, 2)]  # the bar opens before the first batch
    assert result.metrics == ["niqe"] and result.settings["mode"] == "no-reference"  # default without ground truth
    assert len(result.rows) == 2 and all(math.isfinite(r["niqe"]) for r in result.rows)
    assert "pristine" in result.measured_by["niqe"]


def test_degrade_is_reproducible_by_seed_and_reused(tmp_path, capsys):
    gt = tmp_path / "gt"
    for i, img in enumerate(_gt_images(2, h=48, w=48)):
        save_image(img, gt / f"{i}.png")
    a = degrade_folder(gt, tmp_path / "a", "gfpgan", seed=5, overrides={"scale": 2})
    b = degrade_folder(gt, tmp_path / "b", "gfpgan", seed=5, overrides={"scale": 2})
    c = degrade_folder(gt, tmp_path / "c", "gfpgan", seed=6, overrides={"scale": 2})
    for i in range(2):
        assert (tmp_path / "a" / f"{i}.png").read_bytes() == (tmp_path / "b" / f"{i}.png").read_bytes()
    assert a["images"] == b["images"] and a["images"][1]["seed"] == 6 and a["images"][0]["scale"] == 2
    assert (tmp_path / "a" / "0.png").read_bytes() != (tmp_path / "c" / "0.png").read_bytes()
    assert c["images"][0]["seed"] == 6
    # the same command again reuses the images; other settings into the same folder are refused
    stamp = (tmp_path / "a" / "0.png").stat().st_mtime_ns
    assert degrade_folder(gt, tmp_path / "a", "gfpgan", seed=5, overrides={"scale": 2})["images"] == a["images"]
    assert (tmp_path / "a" / "0.png").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="already exist"):
        degrade_folder(gt, tmp_path / "a", "gfpgan", seed=7)

    # through the command line: degrade, then score the degraded inputs themselves (the "Input" row)
    lq, out = tmp_path / "lq", tmp_path / "lq_report"
    args = ["eval", "--gt", str(gt), "--degrade", "gfpgan", "--seed", "5", "--set", "scale=2",
            "--degrade-output", str(lq), "--metrics", "psnr", "--device", "cpu", "-o", str(out)]
    assert main(args) == 0
    assert "scoring the degraded inputs" in capsys.readouterr().out
    assert (lq / "1.png").read_bytes() == (tmp_path / "a" / "1.png").read_bytes()
    doc = json.loads((out / "summary.json").read_text())
    assert doc["settings"]["degradation"] == {"preset": "gfpgan", "seed": 5, "overrides": {"scale": 2}, "output": str(lq)}
    assert json.loads((lq / DEGRADE_MANIFEST).read_text())["seed"] == 5
    assert 10 < doc["metrics"]["psnr"]["value"] < 60
    assert main(args) == 0  # rerun: reused, same numbers
    assert json.loads((out / "summary.json").read_text())["metrics"] == doc["metrics"]

"""`bfr bench`: the tiny CPU run gives well-formed JSON and Markdown; the timing, checking and compile helpers.

No speed is asserted anywhere: only the structure of what is measured and reported.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from bfr_core import bench
from bfr_core.bench import (
    BenchSettings,
    Subject,
    bench_command,
    bench_markdown,
    compare,
    compile_regions,
    fixed_faces,
    measure,
    randomize_,
    run_bench,
)
from bfr_core.bench import _uncompile
from bfr_core.cli import main
from bfr_core.errors import InputError

ROW_FIELDS = {"pipeline", "variant", "dtype", "batch", "steps", "method", "median_s", "p90_s", "s_per_img",
              "img_per_s", "warmup", "repeats", "runs_s", "peak_mem_mib", "check"}


def test_tiny_cpu_bench_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    assert main(["bench", "--tiny", "--device", "cpu", "--warmup", "1", "--repeats", "1", "--pgdiff-steps", "4,2",
                 "--threads", "1", "-o", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the run's thread count is not left behind
    printed = capsys.readouterr().out
    doc = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    assert printed.startswith(md)

    hw = doc["hardware"]
    assert hw["cpu"] and hw["cpu_usable_cores"] >= 1 and hw["device"] == "cpu" and hw["torch"] == torch.__version__
    assert hw["torch_threads"] == 1
    assert doc["command"] == "bfr bench --device cpu --pgdiff-steps 4,2 --warmup 1 --repeats 1 --threads 1 --tiny"
    assert doc["settings"]["tiny"] and doc["settings"]["fast_dtype"] == "fp32" and doc["settings"]["batches"] == [1, 2]
    rows = doc["results"]
    assert {r["pipeline"] for r in rows} == {"VSPBFR", "PLTrans", "PGDiff"}
    for r in rows:
        assert ROW_FIELDS <= set(r)
        assert r["median_s"] > 0 and r["p90_s"] >= r["median_s"] and r["s_per_img"] == pytest.approx(r["median_s"] / r["batch"])
        assert r["variant"] == "eager" and r["dtype"] == "fp32" and r["peak_mem_mib"] is None  # CPU: no device memory
        assert r["check"]["passed"] and "reference" in r["check"]["against"]  # fp32 on the CPU is the reference
    for name in ("VSPBFR", "PLTrans"):
        assert sorted(r["batch"] for r in rows if r["pipeline"] == name) == [1, 2]
        assert all(r["method"] == "measured" and r["repeats"] == 1 for r in rows if r["pipeline"] == name)
    pg = [r for r in rows if r["pipeline"] == "PGDiff" and r["batch"] == 1]
    assert [r["steps"] for r in pg] == [1, 4, 2]
    assert pg[0]["method"] == "per step, from 2-step runs"
    for r in pg[1:]:
        assert r["method"] == "measured" or r["method"].startswith("extrapolated")
        if r["method"].startswith("extrapolated"):
            assert r["median_s"] == pytest.approx(r["steps"] * pg[0]["median_s"])
    assert set(doc["pipelines"]) == {"VSPBFR", "PLTrans", "PGDiff"} and all(v["params_m"] > 0 for v in doc["pipelines"].values())
    faces = doc["faces"]
    assert faces["frame"] == "192x108" and faces["crop_ms_per_face"] > 0
    assert faces["paste_ms_per_face_color"] > 0 and faces["paste_ms_per_frame_4_faces"] > 0 and faces["detect"]["yunet"] > 0
    skipped_detectors = {s["variant"] for s in doc["skipped"] if s["pipeline"] == "faces"}
    assert set(faces["detect"]) | {v.removeprefix("detect ") for v in skipped_detectors} == {"yunet", "retinaface_resnet50"}
    assert all(ms > 0 for ms in faces["detect"].values())

    lines = md.splitlines()
    assert lines[0].startswith(f"Measured {doc['created'][:10]} with `{doc['command']}` (")
    assert lines[2].startswith("Hardware: CPU ") and f"torch {torch.__version__}" in lines[2]
    assert "| pipeline | steps | batch | precision | variant | median s/img | p90 s/img | img/s | vs fp32 | how |" in md
    assert md.count("| VSPBFR |") == 2 and md.count("| PGDiff |") == 6 and "Faces path on a 192x108 frame" in md
    assert "| PGDiff | 1 (per step) | 1 | fp32 | eager |" in md
    assert "| detect yunet / frame |" in md and "| paste, 4 faces / frame |" in md


def _toy(calls: list, error: float):
    """A pipeline builder whose fast (non-fp32) path is off by ``error``; ``calls`` records each call's dtype."""
    def build(device, tiny, seed):
        def run(faces, dtype, steps=None):
            calls.append(dtype)
            return faces + (error if dtype != torch.float32 else 0.0)
        return Subject("Toy", 16, [nn.Conv2d(3, 3, 1)], run, 0.0)
    return build


@pytest.mark.parametrize("error", [0.001, 0.1])
def test_the_fast_path_is_checked_against_fp32_before_it_is_timed(monkeypatch, tmp_path, error):
    calls: list = []
    monkeypatch.setitem(bench._BUILDERS, "vspbfr", _toy(calls, error))
    doc = run_bench(BenchSettings(pipelines=["vspbfr"], device="cpu", dtype="bf16", batches=[1], warmup=1, repeats=2),
                    tmp_path)
    # the fp32 reference, the fast path's check, then the timed fast calls (one warm-up, two runs)
    assert calls == [torch.float32, torch.bfloat16] + [torch.bfloat16] * 3
    (row,) = doc["results"]
    c = row["check"]
    assert row["dtype"] == "bf16" and c["against"] == "fp32 eager, 2 fixed faces"
    # an offset e in [-1, 1] is e/2 in [0, 1]; clipping at white can only make the error smaller
    assert c["psnr_min_db"] >= -20 * math.log10(error / 2) - 1e-6 and c["rel_err"] > 0
    assert c["passed"] == (error == 0.001) and row["median_s"] > 0  # JSON keeps every number
    line = next(x for x in bench_markdown(doc).splitlines() if x.startswith("| Toy"))
    if c["passed"]:
        assert "withheld" not in line and "| ✓ 6" in line
    else:
        assert "withheld (check failed)" in line and f"| ✗ {c['psnr_min_db']:.1f} dB |" in line


def test_budget_skips_with_a_reason_and_bad_settings_fail(tmp_path):
    doc = run_bench(BenchSettings(pipelines=["vspbfr", "faces"], device="cpu", tiny=True, budget_s=0.0), tmp_path)
    assert doc["results"] == [] and doc["faces"] is None and {s["pipeline"] for s in doc["skipped"]} == {"vspbfr", "faces"}
    assert all("budget" in s["reason"] for s in doc["skipped"])
    assert "Skipped:" in (tmp_path / "bench.md").read_text()
    with pytest.raises(InputError, match="unknown pipeline"):
        run_bench(BenchSettings(pipelines=["gfpgan"], device="cpu", tiny=True))
    with pytest.raises(InputError, match="between 2 and 1000"):
        run_bench(BenchSettings(pipelines=["pgdiff"], device="cpu", tiny=True, pgdiff_steps=(1,)))


def test_bench_command_repeats_the_settings():
    assert bench_command(BenchSettings()) == "bfr bench"
    s = BenchSettings(pipelines=["vspbfr", "faces"], batches=[1, 16], max_case_s=60.0, dtype="bf16", compile=True)
    assert bench_command(s) == "bfr bench --pipelines vspbfr,faces --dtype bf16 --batch 1,16 --max-case-s 60 --compile"


def test_measure_warms_up_then_times():
    calls = []
    t = measure(lambda: calls.append(1), torch.device("cpu"), warmup=3, repeats=7, max_s=10.0)
    assert t.warmup == 3 and len(t.runs_s) == 7 and len(calls) == 10
    assert t.median_s <= t.p90_s <= max(t.runs_s) and t.peak_mem_mib is None
    calls.clear()  # a time cap stops the timed runs early, but never below the minimum
    slow = measure(lambda: calls.append(torch.ones(64, 64) @ torch.ones(64, 64)), torch.device("cpu"), warmup=1,
                   repeats=100, max_s=0.0, min_repeats=3)
    assert len(slow.runs_s) == 3 and slow.warmup == 1


def test_compare_and_fixed_faces():
    faces = fixed_faces(4, 32)
    assert faces.shape == (4, 3, 32, 32) and faces.min() >= -1 and faces.max() <= 1
    torch.testing.assert_close(faces, fixed_faces(4, 32))  # fixed: the same every time
    assert not torch.equal(faces[0], faces[1])
    same = compare(faces, faces)
    assert same["psnr_min_db"] == 200.0 and same["rel_err"] == 0.0
    # a 0.01 shift in [-1, 1] is 0.005 in [0, 1]: PSNR = −20·log10(0.005) ≈ 46.02 dB
    off = compare(faces.clamp(-0.9, 0.9) + 0.01, faces.clamp(-0.9, 0.9))
    assert off["psnr_min_db"] == pytest.approx(46.0206, abs=1e-3)
    assert compare(faces * float("nan"), faces)["finite"] is False


def test_randomize_fills_constant_parameters_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3))
    nn.init.zeros_(net[2].weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    randomize_(net, seed=1)
    after = net.state_dict()
    torch.testing.assert_close(after["0.weight"], before["0.weight"])  # already random: kept
    assert after["2.weight"].std() > 0 and after["1.weight"].std() > 0  # zero-initialised / constant: filled
    torch.testing.assert_close(after["3.running_var"], before["3.running_var"])  # buffers untouched
    again = randomize_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)), seed=1)
    torch.testing.assert_close(again.state_dict()["1.bias"], after["1.bias"])  # seeded


def test_compile_regions_marks_the_outermost_repeated_blocks():
    from bfr_core.models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig

    net = RRDBRestorer(RRDBRestorerConfig(mid_channels=8, num_blocks=2, growth_channels=4))
    assert compile_regions([net]) == ["RRDB"]  # declared by the model; compiling happens lazily at the first call
    marked = [type(m).__name__ for m in net.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert marked == ["RRDB", "RRDB"]  # the dense blocks inside are not compiled again
    _uncompile([net])
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in net.modules())

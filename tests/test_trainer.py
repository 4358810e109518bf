"""The trainer: configs, data order, EMA, checkpoints that survive SIGKILL, export + Hub, and tiny runs that learn."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from . import hub_server

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "trainer" / "configs"
SHARED_HQ = REPO.parent / "shared" / "data" / "hq"


# ------------------------------------------------------------------------------------------------ helpers


def load_export(path: Path):
    """Load an exported file through bfr_core.weights, as the nodes do."""
    from bfr_core.errors import WeightsError
    from bfr_core.weights import load_model

    try:
        return load_model(path, cache=False)
    except WeightsError as e:
        if "must take a config dataclass" in str(e):  # bfr_core.weights does not yet unwrap `Config | None`
            pytest.xfail(f"bfr_core.weights cannot rebuild the stored config: {e}")
        raise


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """Accelerate keeps process-wide state; every in-process run starts from a clean one.

    Runs use one thread: these models are tiny, and the test machine's cores are shared.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate()
    yield
    reset_accelerate()
    torch.set_num_threads(threads)


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide state (between in-process runs of one test)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def make_faces(folder: Path, n: int = 12, size: int = 40) -> Path:
    """Smooth synthetic 'faces' (colour blobs) in nested folders, so data tests need no real data."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c = rng.uniform(0.2, 0.8, size=(3,))
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = (0.5 * (1 - blob) + blob * c + 0.1 * np.sin(8 * xx + i)[..., None]).clip(0, 1)
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(sub / f"face_{i:02d}.png")
    return folder


def tiny_overrides(out: Path, root: Path, **extra) -> list[str]:
    items = {
        "output_dir": str(out), "data.root": str(root), "data.degradation": "simple", "data.size": 32,
        "data.max_images": None, "log.progress_bar": False, "log.tracker": "none",
    }
    items.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items.items()]


def load_cfg(name: str, overrides: list[str]):
    from trainer.config import load_config

    return load_config(CONFIGS / name, overrides)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


# ------------------------------------------------------------------------------------------------ configs


def test_configs_validate_and_name_mistakes(tmp_path):
    from trainer.config import ConfigError

    root = make_faces(tmp_path / "faces", 4)
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert len(names) >= 6
    for name in names:  # every shipped config is valid
        cfg = load_cfg(name, [f"data.root={root}"])
        assert cfg.stage in name
    cfg = load_cfg("pgdiff_restorer_tiny.yaml", ["optim.lr=3e-4", "losses.0.weight=0.5", "models.restorer.num_blocks=3"])
    assert cfg.optim.lr == 3e-4 and cfg.losses[0].weight == 0.5 and cfg.models["restorer"].config.num_blocks == 3
    cfg = load_cfg("pgdiff_restorer_tiny.yaml", ["mixed_precision=no", "val.lpips=off"])  # YAML booleans, as typed
    assert cfg.mixed_precision == "no" and cfg.val.lpips == "off"

    cases = [
        (["optim.lrr=1"], "optim.lrr: unknown setting. Did you mean 'lr'"),
        (["batch_size=two"], "batch_size: expected an integer"),
        (["stage=pgdiff_restorr"], "Did you mean 'pgdiff_restorer'"),
        (["models.restorer.num_blockz=2"], "models.restorer.num_blockz: unknown setting"),
        (["models.restorer.type=unet9"], "unknown model type 'unet9'"),
        (["losses.0.type=lpipz"], "Did you mean 'lpips'"),
        (["data.degrade_on=gpu"], "data.degrade_on: 'gpu' is not one of"),
        (["stage_options.t_max=5000"], "t_max"),
        (["data.size=30"], "multiple of 8"),
        (["losses=[]"], "needs at least one loss"),
        (["models.extra={type: rrdb_restorer}"], "unknown extra"),
        (["data.degradation=none"], "degraded inputs"),
        (["optim_overrides.d.lr=1"], "not trained by"),
        (["losses.7.weight=1"], "not an index"),
        (["data.description=yes"], "quote the word"),
        (["data.augment.scale=[1.1, 0.9]"], "data.augment.scale must be 0 < low ≤ high"),
        (["data.augment.zoom=2"], "data.augment.zoom: unknown setting"),
        (["data.augment.hue=0.7"], "hue ≤ 0.5"),
    ]
    for overrides, match in cases:
        with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(".", r"\.")):
            load_cfg("pgdiff_restorer_tiny.yaml", overrides)
    with pytest.raises(ConfigError, match="fixed objective"):
        load_cfg("pgdiff_ddpm_tiny.yaml", ["losses=[{type: mse}]"])
    with pytest.raises(ConfigError, match="data: required setting is missing"):
        from trainer.config import validate

        validate({"stage": "pgdiff_ddpm", "models": {"unet": {"type": "adm_unet"}}})


def test_every_registered_model_type_builds_its_config():
    from trainer.registry import DEGRADATIONS, LOSSES, MODELS, STAGES

    for name in MODELS.names():
        entry = MODELS.get(name)
        assert entry.config.__dataclass_fields__ and issubclass(entry.cls, torch.nn.Module), name
    for name in STAGES.names():
        stage = STAGES.get(name)
        stage.options()  # defaults are valid
        assert stage.export in stage.models and set(stage.trainable) <= set(stage.models)
        assert set(stage.export_with) <= set(stage.models) - {stage.export}
    assert {"mse", "l1", "lpips", "identity"} <= set(LOSSES.names())
    assert {"none", "simple", "realesrgan", "gfpgan", "gpen"} <= set(DEGRADATIONS.names())


def test_cli_reports_config_errors_without_a_traceback(tmp_path, caplog):
    from trainer.train import main

    assert main(["--config", str(CONFIGS / "pgdiff_restorer_tiny.yaml"), "optim.betas=[0.9]"]) == 2
    assert "optim.betas: expected 2 values" in caplog.text
    assert main(["--list"]) == 0


# -------------------------------------------------------------------------------------------------- data


def test_split_is_stable_and_batches_depend_only_on_seed_and_position(tmp_path):
    from trainer.data import FaceFolder, StepBatchSampler, list_faces, split_files

    root = make_faces(tmp_path / "faces", 12)
    files = list_faces(root)
    assert len(files) == 12 and files[0][1].startswith("a/")  # recursive, sorted by relative path
    train, val = split_files(files, 0.25, 100)
    assert len(val) == 3 and not {f[1] for f in train} & {f[1] for f in val}
    train2, val2 = split_files(files[:-1], 0.25, 100)  # one file fewer: the rest stays where it was
    assert {f[1] for f in val2} <= {f[1] for f in val} | {f[1] for f in files[-1:]}

    s = StepBatchSampler(9, 2, seed=3, rank=0, world=1, start=0)
    it = iter(s)
    full = [next(it) for _ in range(10)]
    resumed = iter(StepBatchSampler(9, 2, seed=3, start=6))
    assert [next(resumed) for _ in range(4)] == full[6:]
    assert {i for b in full[:4] for i, e in b if e == 0} == {i for b in full[:4] for i, _ in b}  # 4 batches per epoch
    r0 = [StepBatchSampler(9, 2, 3, rank=0, world=2).batch(m) for m in range(2)]
    r1 = [StepBatchSampler(9, 2, 3, rank=1, world=2).batch(m) for m in range(2)]
    assert not {i for b in r0 for i, _ in b} & {i for b in r1 for i, _ in b}  # ranks see disjoint images

    from trainer.data import SimpleDegradation

    ds = FaceFolder(train, 32, seed=1, stream="train", degrade=SimpleDegradation(), hflip=True)
    a, b = ds[(4, 7)], ds[(4, 7)]
    assert torch.equal(a["lq"], b["lq"]) and a["hq"].shape == (3, 32, 32)
    assert not torch.equal(ds[(4, 8)]["lq"], a["lq"])  # another epoch, another degradation
    assert a["hq"].min() >= -1 and a["hq"].max() <= 1


def test_loader_output_does_not_depend_on_workers(tmp_path):
    from trainer.config import DataConfig
    from trainer.data import FaceFolder, SimpleDegradation, list_faces, train_loader

    root = make_faces(tmp_path / "faces", 8)
    ds = FaceFolder(list_faces(root), 32, seed=5, stream="train", degrade=SimpleDegradation(), hflip=True)
    out = {}
    for workers in (0, 2):
        cfg = DataConfig(root=str(root), size=32, num_workers=workers)
        it = iter(train_loader(ds, cfg, 2, seed=5, rank=0, world=1, start_micro=3, pin_memory=False))
        out[workers] = [next(it) for _ in range(3)]
    for x, y in zip(out[0], out[2]):
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["index"], y["index"])


def test_augmentation_is_reproducible_measured_and_never_touches_validation(tmp_path):
    from trainer.config import AugmentConfig, DataConfig
    from trainer.data import FaceFolder, augment_face, list_faces
    from trainer.stages.compact import build_held_out

    # a zoom of exactly 2 about the centre doubles a centred square (a 16 px square of a 64 px source → 32 px
    # of 64 → 16 px of the 32 px output, where without the zoom it would be 8 px)
    src = torch.zeros(3, 64, 64)
    src[:, 24:40, 24:40] = 1
    gen = torch.Generator().manual_seed(0)
    zoomed = augment_face(src, AugmentConfig(scale=(2.0, 2.0)), gen, 32)
    plain = augment_face(src, AugmentConfig(), gen, 32)
    assert zoomed.shape == plain.shape == (3, 32, 32)
    assert abs(float(zoomed[0].sum()) - 16 * 16) < 8 and abs(float(plain[0].sum()) - 8 * 8) < 4
    assert float(zoomed[0, 16, 9]) > 0.9 and float(plain[0, 16, 9]) < 0.1

    # brightness alone: one offset per face within ±0.1, drawn from the item's generator
    face = torch.full((3, 16, 16), 0.5)
    shifts = {round(float(augment_face(face, AugmentConfig(brightness=0.1), torch.Generator().manual_seed(k), 16)
                          .sub(face).unique().item()), 6) for k in range(4)}
    assert len(shifts) == 4 and all(abs(v) <= 0.1 for v in shifts)

    root = make_faces(tmp_path / "faces", 4)
    cfg = AugmentConfig(scale=(0.9, 1.1), rotate=5, translate=0.05, contrast=0.1, saturation=0.1, hue=0.02)
    ds = FaceFolder(list_faces(root), 32, seed=3, stream="train", hflip=True, cache=True, augment=cfg)
    a, b = ds[(1, 4)]["hq"], ds[(1, 4)]["hq"]
    assert torch.equal(a, b) and a.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(ds[(1, 5)]["hq"], a)  # another epoch, another draw
    no_aug = FaceFolder(list_faces(root), 32, seed=3, stream="train", hflip=True, augment=AugmentConfig())
    assert no_aug.augment is None  # all-zero settings are no augmentation (and draw nothing)

    names = ["00008.png", "a.png", "b.png", "c.png"]  # 00008.png is one of compact_eval.HELD_OUT
    held = make_faces(tmp_path / "held", 4)
    for (p, _), name in zip(list_faces(held), names):
        p.rename(held / name)
    train, val = build_held_out(DataConfig(root=str(held), size=32, augment=cfg), 0, None)
    assert train.augment is cfg and val.augment is None and [p.name for p, _ in val.files] == ["00008.png"]


@pytest.mark.data
def test_whole_photos_are_aligned_once_and_cached(tmp_path, monkeypatch):
    from trainer.config import DataConfig
    from trainer.data import align_photos, list_faces

    whole, weights = SHARED_HQ.parent / "lq" / "whole", SHARED_HQ.parent / "weights" / "detection_mobilenet0.25_Final.pth"
    if not whole.is_dir() or not weights.is_file():
        pytest.skip(f"real photos or detector weights not found under {SHARED_HQ.parent}")
    photos = tmp_path / "photos"
    (photos / "group").mkdir(parents=True)
    for name, dest in (("cf_00.jpg", "cf_00.jpg"), ("insightface_group_t1.jpg", "group/t1.jpg")):
        (photos / dest).symlink_to(whole / name)
    cfg = DataConfig(root=str(photos), size=64, align="detect", detector=str(weights), align_min_face=16, align_max_faces=0)
    out = align_photos(cfg, tmp_path / "aligned")
    crops = [rel for _, rel in list_faces(out)]
    assert "cf_00.jpg/face0.png" in crops and sum(c.startswith("group/t1.jpg/") for c in crops) >= 3, crops
    from PIL import Image

    assert Image.open(out / crops[0]).size == (64, 64)

    import bfr_core.faces as faces

    monkeypatch.setattr(faces, "detect_faces", lambda *a, **k: pytest.fail("detected again instead of using the cache"))
    assert [rel for _, rel in list_faces(align_photos(cfg, out))] == crops
    (photos / "group" / "t1.jpg").unlink()  # a removed photo takes its crops with it
    assert [rel for _, rel in list_faces(align_photos(cfg, out))] == [c for c in crops if c.startswith("cf_00.jpg/")]


# -------------------------------------------------------------------------------------- EMA / checkpointing


def test_ema_matches_the_definition():
    from trainer.ema import EMA

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model, 1)
    assert torch.allclose(ema.module[0].weight, 0.9 * w0 + 0.1 * model[0].weight)
    assert int(ema.module[1].num_batches_tracked) == 5 and not ema.module.training
    assert torch.equal(ema.state_dict()["0.weight"], ema.module[0].weight)
    ema2 = EMA(model, decay=0.9, start_step=5)
    ema2.update(model, 3)  # before start_step the average is a copy
    assert torch.equal(ema2.module[0].weight, model[0].weight)
    ema2.load_state_dict(ema.state_dict())
    assert torch.equal(ema2.module[0].weight, ema.module[0].weight)


def test_gradient_checkpointing_gives_the_same_gradients():
    from bfr_core.models.rrdb_restorer import RRDBRestorer, RRDBRestorerConfig
    from trainer.models import enable_gradient_checkpointing

    torch.manual_seed(0)
    a = RRDBRestorer(RRDBRestorerConfig(mid_channels=8, num_blocks=2, growth_channels=4))
    b = RRDBRestorer(RRDBRestorerConfig(mid_channels=8, num_blocks=2, growth_channels=4))
    b.load_state_dict(a.state_dict())
    assert enable_gradient_checkpointing(b) == 2
    x, y, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([3, 900])
    a(x, y, t, clamp=False).square().mean().backward()
    b(x, y, t, clamp=False).square().mean().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_crash_during_save_keeps_the_previous_state(tmp_path, monkeypatch):
    from trainer import checkpoint as ckpt
    from trainer.loop import Trainer

    root = make_faces(tmp_path / "faces", 8)
    out = tmp_path / "run"
    cfg = load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, max_steps=4, **{"checkpoint.every": 2}))
    trainer = Trainer(cfg)
    real_save = trainer.accelerator.save_state

    def crashing_save(path):
        real_save(path)
        if "00000004" in str(path):
            (Path(path) / "optimizer.bin").write_bytes(b"half a file")
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(trainer.accelerator, "save_state", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        trainer.run()
    states = ckpt.list_states(out / "checkpoints")
    assert [s for s, _ in states] == [2]
    assert (out / "checkpoints" / ".tmp-step-00000004").exists()

    monkeypatch.undo()
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    again = Trainer(cfg)  # removes the leftover and resumes from step 2
    assert again.step == 2 and not (out / "checkpoints" / ".tmp-step-00000004").exists()
    result = again.run()
    assert result.step == 4 and (out / "export" / "model.safetensors").is_file()
    assert [s for s, _ in ckpt.list_states(out / "checkpoints")] == [2, 4]


# ------------------------------------------------------------------------ SIGKILL / SIGTERM and exact resume


class Launcher:
    """Starts training runs as separate processes from a forkserver that imported torch and the trainer once.

    A run is a real process (it can be SIGKILLed and leaves only what it wrote), but it starts in a fraction
    of a second instead of re-importing torch. Runs inherit this process's environment when the forkserver
    starts (set ``OMP_NUM_THREADS=1`` first: it keeps every run's arithmetic identical).
    """

    def __init__(self) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload([
            "torch", "torch._dynamo", "accelerate", "safetensors.torch", "tqdm.auto", "bfr_core.metrics", "trainer.loop",
            "trainer.train", "trainer.models", "trainer.losses", "trainer.data", "trainer.stages.pgdiff",
        ])

    def start(self, argv: list[str]):
        from trainer.train import cli

        p = self.ctx.Process(target=cli, args=(argv,))
        p.start()
        return p


def _script(argv: list[str], log_path: Path) -> subprocess.Popen:
    """``python trainer/train.py ...`` exactly as a user runs it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "trainer/train.py", *argv], cwd=REPO, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def _wait_for(path: Path, proc, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if not proc.is_alive():
            raise AssertionError(f"the run ended (status {proc.exitcode}) before {path.name} appeared")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def _final_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    state = out / "checkpoints" / f"step-{step:08d}"
    weights = {f"model.{k}": v for k, v in read_tensors(state / "model.safetensors").items()}
    weights.update({f"ema.{k}": v for k, v in read_tensors(state / "ema.safetensors").items()})
    weights.update({f"export.{k}": v for k, v in read_tensors(out / "export" / "model.safetensors").items()})
    return weights


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """SIGTERM (saves and stops) and SIGKILL (no warning) mid-run; each resume continues exactly."""
    from trainer.checkpoint import list_states, read_trainer_state

    root = make_faces(tmp_path / "faces", 12)
    steps = 40

    def overrides(out: Path, workers: int) -> list[str]:
        return tiny_overrides(out, root, max_steps=steps, batch_size=2, grad_accum=2, deterministic=True, **{
            "checkpoint.every": 5, "log.every": 5, "log.sample_every": 15, "log.val_every": 1000,
            "data.num_workers": workers, "data.cache": "none",
        })

    config = ["--config", str(CONFIGS / "pgdiff_restorer_tiny.yaml")]
    ref_out, run_out = tmp_path / "reference", tmp_path / "interrupted"
    # The uninterrupted reference runs as users run it, with a loader worker; the interrupted runs load in-process.
    ref = _script(config + overrides(ref_out, 1), tmp_path / "reference.log")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    launcher = Launcher()
    log_file, seen, last_saved = run_out / "train.log", 0, None
    for phase, (sig, wait_step) in enumerate([(signal.SIGTERM, 10), (signal.SIGKILL, 25)]):
        # Phase 0 loads with a worker and signals it too, as a scheduler signals a whole job.
        run = launcher.start(config + overrides(run_out, 1 - phase) + ["data.worker_start=fork"])
        _wait_for(run_out / "checkpoints" / f"step-{wait_step:08d}" / "COMPLETE", run)
        import psutil

        for proc in [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]:
            proc.send_signal(sig)
        run.join(timeout=120)
        status = run.exitcode
        text = log_file.read_text()[seen:]
        seen += len(text)
        assert status == (128 + int(sig) if sig == signal.SIGTERM else -int(sig)), text
        assert not (run_out / "export").exists(), "the run finished before it could be interrupted"
        saved = list_states(run_out / "checkpoints")
        assert wait_step <= saved[-1][0] < steps
        if sig == signal.SIGTERM:  # the signal saved the step it arrived at
            assert "SIGTERM received" in text and read_trainer_state(saved[-1][1])["step"] == saved[-1][0]
        if phase:
            assert f"resumed from {last_saved}" in text
        last_saved = saved[-1][1]
    final = launcher.start(config + overrides(run_out, 0) + ["data.worker_start=fork"])
    final.join(timeout=300)
    text = log_file.read_text()[seen:]
    assert final.exitcode == 0 and f"resumed from {last_saved}" in text, text
    assert ref.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    assert_same_tensors(_final_weights(ref_out, steps), _final_weights(run_out, steps))


def test_a_learning_rate_changed_on_resume_takes_effect(tmp_path, caplog):
    from trainer.loop import train

    root = make_faces(tmp_path / "faces", 8)
    out = tmp_path / "run"

    def run(steps: int, lr: float):
        reset_accelerate()
        cfg = load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, max_steps=steps, **{
            "log.every": 1, "checkpoint.every": 2, "optim.lr": lr, "optim.schedule": "cosine",
            "optim.min_lr_ratio": 0.0, "optim.warmup_steps": 0}))
        return train(cfg)

    first = run(2, 1e-3)
    with caplog.at_level("INFO", logger="trainer.loop"):
        resumed = run(4, 1e-4)

    def lrs(result) -> dict[int, float]:
        return {h["step"]: h["lr/restorer"] for h in result.history if "lr/restorer" in h}

    def cosine(step: int, total: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / total))

    assert lrs(first)[1] == pytest.approx(1e-3 * cosine(1, 2))
    assert lrs(resumed)[3] == pytest.approx(1e-4 * cosine(3, 4))  # the new base rate, the schedule's factor
    assert "0.001 in the saved state, 0.0001 in the config" in caplog.text


# --------------------------------------------------------------------------------------- export and Hub


def test_export_loads_through_bfr_core_and_publishes_to_the_hub(tmp_path, monkeypatch):
    from trainer.loop import export_only, train

    hub = hub_server.FakeHub()
    server = hub_server.start(hub)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        root = make_faces(tmp_path / "faces", 8)
        out = tmp_path / "run"
        cfg = load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, max_steps=3, **{"log.every": 1}))
        result = train(cfg, push_to_hub="me/restorer-tiny")
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        again = export_only(cfg, push_to_hub="me/restorer-tiny")  # re-export the saved state, publish again
    finally:
        server.shutdown()
    export = out / "export"
    files = {"model.safetensors", "config.json", "README.md", "training_config.yaml", "metrics.json"}
    assert {p.name for p in export.iterdir()} >= files
    card = (export / "README.md").read_text()
    for needle in ("license: other", "pgdiff_rrdb_restorer", "steps: 3 of 3", "val/psnr_restored", "data licence", "S-Lab"):
        assert needle in card, needle
    assert len(hub.commits) == 2 and hub.commits[-1]["repo"] == "me/restorer-tiny" and "me/restorer-tiny" in hub.repos
    assert set(hub.commits[0]["files"]) >= {"model.safetensors", "README.md", "config.json"}
    assert result.hub_commit.endswith("/commit/" + hub_server.COMMIT) and again.step == 3
    assert again.metrics == result.metrics  # validation is deterministic

    # What was uploaded is the exported file, and it loads (architecture and config from its metadata).
    uploaded = hub.files["me/restorer-tiny/model.safetensors"]
    assert uploaded == (export / "model.safetensors").read_bytes()
    loaded = load_export(export / "model.safetensors")
    assert loaded.architecture == "pgdiff_rrdb_restorer" and loaded.config.num_blocks == 2
    ema = read_tensors(out / "checkpoints" / "step-00000003" / "ema.safetensors")
    assert_same_tensors({k: v for k, v in loaded.model.state_dict().items()}, ema)


def test_time_budget_ends_the_run_with_an_export_a_later_run_resumes_and_validate_only_measures(tmp_path):
    from trainer.config import ConfigError
    from trainer.loop import train, validate_only

    root = make_faces(tmp_path / "faces", 8)
    out = tmp_path / "run"
    cfg = load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, max_steps=50, max_minutes=1e-6))
    result = train(cfg)
    assert result.out_of_time and result.stopped_by is None and result.step == 1
    assert (out / "export" / "model.safetensors").is_file() and "steps: 1 of 50" in (out / "export" / "README.md").read_text()
    assert any("val/psnr_restored" in row for row in result.history)  # validated at the last step it ran
    reset_accelerate()
    again = train(load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, max_steps=3)))
    assert again.step == 3 and not again.out_of_time

    # --validate_only: the saved state measured under other degradations, nothing trained or saved
    states = sorted(p.name for p in (out / "checkpoints").iterdir())
    measured = {}
    for scale in (1.0, 4.0):
        reset_accelerate()
        options = {"data.degradation_options": {"scale_range": [scale, scale], "noise_range": [0, 0]}}
        measured[scale] = validate_only(load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, **options)))
    assert measured[1.0].step == measured[4.0].step == 3
    assert measured[1.0].metrics["val/psnr_degraded"] > measured[4.0].metrics["val/psnr_degraded"] + 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == states
    reset_accelerate()
    with pytest.raises(ConfigError, match="nothing to validate"):
        validate_only(load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(tmp_path / "empty", root)))
    with pytest.raises(ConfigError, match="data.degradation_options: preset 'gfpgan' has no parameter 'sigma'"):
        load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, **{"data.degradation": "gfpgan",
                                                                           "data.degradation_options": {"sigma": 2}}))
    with pytest.raises(ConfigError, match="max_minutes"):
        load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(out, root, max_minutes=0))


# ------------------------------------------------- adding a stage: a two-optimiser (GAN-style) toy stage


def _toy_gan_stage():
    """Register a toy stage the way a real one is added: model types, options, one step function."""
    import torch.nn.functional as F

    from trainer.models import ModelType
    from trainer.registry import MODELS, STAGES
    from trainer.stages import register_stage

    if "test_toy_gan" in STAGES:
        return
    MODELS.register("test_tiny_net", ModelType("tests.tiny_arch", "TinyNet", "TinyNetConfig", "tiny_net"))

    @dataclass
    class ToyOptions:
        adv_weight: float = 0.1

    @register_stage("test_toy_gan", options=ToyOptions, models=("generator", "critic"), export="generator")
    def toy_gan_step(ctx, batch):
        """A generator restores lq faces against a critic (non-saturating losses), critic phase first."""
        g, d = ctx.models["generator"], ctx.models["critic"]
        fake = g(batch["lq"])
        d_loss = F.softplus(d(fake.detach()).mean()) + F.softplus(-d(batch["hq"]).mean())
        ctx.backward(d_loss)
        ctx.optimizer_step("critic")
        with ctx.frozen(d):
            rec, parts = ctx.losses(fake, batch["hq"])
            g_loss = rec + ctx.options.adv_weight * F.softplus(-d(fake).mean())
        ctx.backward(g_loss)
        return {"loss": g_loss, "d_loss": d_loss, **parts}


def test_a_new_two_optimiser_stage_slots_in(tmp_path):
    from trainer.config import ConfigError, validate
    from trainer.loop import Trainer

    _toy_gan_stage()
    root = make_faces(tmp_path / "faces", 6)
    raw = {
        "stage": "test_toy_gan", "output_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 2,
        "models": {"generator": {"type": "test_tiny_net", "channels": 4}, "critic": {"type": "test_tiny_net", "depth": 1}},
        "losses": [{"type": "l1"}], "optim_overrides": {"critic": {"lr": 4e-4}},
        "data": {"root": str(root), "size": 16, "degradation": "simple", "num_workers": 0},
        "log": {"every": 1, "tracker": "none", "progress_bar": False}, "val": {"lpips": "off"},
    }
    trainer = Trainer(validate(raw))
    before = {n: [p.detach().clone() for p in m.parameters()] for n, m in trainer.models.items()}
    result = trainer.run(export=False)
    last = [h for h in result.history if "train/loss" in h][-1]
    assert result.step == 3 and {"train/d_loss", "train/l1", "lr/critic", "lr/generator"} <= set(last)
    assert last["lr/critic"] == 4e-4 and last["lr/generator"] == 1e-4 and "val/d_loss" in result.metrics
    for name, model in trainer.models.items():
        assert all(not torch.equal(a, b) for a, b in zip(before[name], model.parameters())), name
    assert all(s.scheduler.last_epoch == 3 for s in trainer.schedulers.values())  # each optimiser stepped once per step

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    raw.update(output_dir=str(tmp_path / "run2"), grad_accum=2)
    with pytest.raises(ConfigError, match="grad_accum=1"):
        Trainer(validate(raw)).run(export=False)


def test_models_start_from_given_weights(tmp_path):
    from trainer.loop import Trainer, train

    root = make_faces(tmp_path / "faces", 6)
    first = train(load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(tmp_path / "a", root, max_steps=2)))
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    weights = first.export_dir / "model.safetensors"
    cfg = load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(tmp_path / "b", root, **{"models.restorer.init": str(weights)}))
    trainer = Trainer(cfg)
    assert_same_tensors(dict(trainer.accelerator.unwrap_model(trainer.models["restorer"]).state_dict()), read_tensors(weights))
    trainer.close()


# ------------------------------------------------------------------------------------------------ losses


def test_loss_terms_are_differentiable_and_labelled():
    from bfr_core.errors import WeightsError
    from trainer.config import LossSpec
    from trainer.losses import build_losses

    specs = [LossSpec.from_raw({"type": "mse"}, "l0"), LossSpec.from_raw({"type": "l1", "weight": 0.5}, "l1"),
             LossSpec.from_raw({"type": "lpips", "weight": 0.1, "net": "alex", "random_init": True}, "l2"),
             LossSpec.from_raw({"type": "identity", "weight": 0.1, "random_init": True,
                                "random_config": {"layers": [1, 1, 1, 1], "widths": [8, 8, 8, 8], "num_features": 16}}, "l3")]
    losses = build_losses(specs, torch.device("cpu"))
    pred = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    total, parts = losses(pred, target)
    total.backward()
    assert set(parts) == {"mse", "l1", "lpips", "identity"} and pred.grad.abs().sum() > 0
    expected = parts["mse"] + 0.5 * parts["l1"] + 0.1 * parts["lpips"] + 0.1 * parts["identity"]
    assert torch.allclose(total, expected)
    assert any("RANDOM INIT" in d for d in losses.describe())
    with pytest.raises(WeightsError, match="ms1mv3_arcface_r50_fp16.pth"):
        build_losses([LossSpec.from_raw({"type": "identity"}, "l")], torch.device("cpu"))


def test_real_lpips_loss_when_its_weights_are_installed():
    from bfr_core.errors import WeightsError
    from trainer.config import LossSpec
    from trainer.losses import build_losses

    try:
        losses = build_losses([LossSpec.from_raw({"type": "lpips", "net": "alex"}, "l")], torch.device("cpu"))
    except WeightsError as e:
        assert "lpips --download" in str(e)  # the error names the command that installs them
        pytest.skip(f"LPIPS weights not installed: {e}")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    total, _ = losses(x, x)
    assert float(total) < 1e-6 and "RANDOM" not in losses.describe()[0]


# ------------------------------------------------------------------------- proof that the stages learn


def _hq_or_skip() -> Path:
    if not SHARED_HQ.is_dir():
        pytest.skip(f"real faces not found at {SHARED_HQ} (they live beside the repository, never inside it)")
    return SHARED_HQ


def real_config(name: str, out: Path, **overrides):
    """A shipped config on the real faces of ../shared/data/hq (skips without them), with ``overrides``."""
    items = {"output_dir": str(out), "data.root": str(_hq_or_skip()), "log.progress_bar": False, **overrides}
    return load_cfg(name, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items.items()])


def assert_resumes_exactly(tmp_path: Path, config: str, overrides: dict) -> tuple:
    """A run stopped after step 2 and resumed ends where an unbroken 4-step run ends: same exported weights and
    the same last training loss (stage tests of every method use this). → (unbroken, resumed) results."""
    from trainer.loop import train

    def run(out: Path, steps: int):
        reset_accelerate()
        return train(real_config(config, out, max_steps=steps, **overrides, **{
            "checkpoint.every": 2, "log.every": 1, "log.num_samples": 0, "data.val_fraction": 0}))

    whole = run(tmp_path / "whole", 4)
    run(tmp_path / "parts", 2)
    resumed = run(tmp_path / "parts", 4)
    assert_same_tensors(read_tensors(tmp_path / "whole" / "export" / "model.safetensors"),
                        read_tensors(tmp_path / "parts" / "export" / "model.safetensors"))

    def last_loss(result) -> float:
        return [h for h in result.history if h["step"] == 4 and "train/loss" in h][0]["train/loss"]

    assert last_loss(whole) == last_loss(resumed)
    return whole, resumed


def _degradation() -> str:
    try:
        from bfr_core import degrade  # noqa: F401
    except ImportError:
        return "simple"
    return "realesrgan"


@pytest.mark.data
def test_tiny_restorer_learns_on_real_faces(tmp_path):
    from trainer.loop import train

    root = _hq_or_skip()
    out = tmp_path / "restorer"
    overrides = tiny_overrides(out, root, max_steps=24, **{
        "data.degradation": _degradation(), "data.max_images": 8, "data.val_max": 2, "log.tracker": "tensorboard",
        "log.every": 4, "log.sample_every": 12, "log.val_every": 24, "checkpoint.every": 12})
    result = train(load_cfg("pgdiff_restorer_tiny.yaml", overrides))
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert len(losses) == 6 and np.mean(losses[-2:]) < 0.7 * losses[0], losses
    assert result.metrics["val/psnr_restored"] > 10 and "val/psnr_degraded" in result.metrics
    assert (out / "samples" / "step-00000024.png").is_file()
    if _has_tensorboard():
        assert list((out / "logs" / "pgdiff-restorer-tiny").glob("events.out.tfevents.*"))
    restorer = load_export(out / "export" / "model.safetensors").model
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    assert restorer(y, y, torch.tensor([999])).shape == (1, 3, 32, 32)


@pytest.mark.data
def test_tiny_ddpm_learns_and_samples_in_the_pgdiff_pipeline(tmp_path):
    from bfr_core.pipelines.pgdiff import restore
    from trainer.loop import train

    root = _hq_or_skip()
    out = tmp_path / "ddpm"
    overrides = tiny_overrides(out, root, max_steps=20, **{
        "data.degradation": "none", "data.max_images": 8, "data.val_max": 2, "log.every": 4, "log.sample_every": 20,
        "log.val_every": 20, "checkpoint.every": 20})
    result = train(load_cfg("pgdiff_ddpm_tiny.yaml", overrides))
    mse = [h["train/mse"] for h in result.history if "train/mse" in h]
    assert len(mse) == 5 and np.mean(mse[-2:]) < 0.7 * mse[0], mse
    assert "val/loss" in result.metrics and (out / "samples" / "step-00000020.png").is_file()
    unet = load_export(out / "export" / "model.safetensors").model
    assert unet.config.image_size == 32 and unet.config.out_channels == 6
    faces = restore(unet, torch.zeros(1, 3, 32, 32), None, steps=4, seed=1)
    assert faces.shape == (1, 3, 32, 32) and torch.isfinite(faces).all()


def test_vspbfr_code_diffuser_stage_trains_only_the_diffuser(tmp_path):
    """Mechanics of a stage with frozen helpers: the encoder and decoder stay as built, the diffuser learns.

    (Its tiny config needs ~100+ steps before the loss falls, too long for CI: see the stage's notes.)
    """
    from trainer.loop import Trainer

    root = make_faces(tmp_path / "faces", 6)
    out = tmp_path / "vspbfr"
    cfg = load_cfg("vspbfr_code_diffuser_tiny.yaml", tiny_overrides(out, root, max_steps=3, **{
        "data.degradation": "gfpgan", "log.every": 1, "log.sample_every": 3, "log.val_every": 3}))
    trainer = Trainer(cfg)
    before = {n: {k: v.clone() for k, v in trainer.accelerator.unwrap_model(m).state_dict().items()}
              for n, m in trainer.models.items()}
    result = trainer.run()
    after = {n: trainer.accelerator.unwrap_model(m).state_dict() for n, m in trainer.models.items()}
    assert_same_tensors(before["encoder"], dict(after["encoder"]))
    assert_same_tensors(before["decoder"], dict(after["decoder"]))
    assert all(not torch.equal(before["diffuser"][k], after["diffuser"][k]) for k in before["diffuser"])
    assert {"train/code_l1", "train/l1"} <= set(result.history[0]) and "val/psnr_restored" in result.metrics
    from PIL import Image

    with Image.open(out / "samples" / "step-00000003.png") as grid:  # degraded | inverted | restored | target
        assert grid.size[0] == 4 * 34 + 2
    loaded = load_export(out / "export" / "model.safetensors")
    assert loaded.architecture == "vspbfr_code_diffuser" and loaded.config.latent_dim == 16


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_bf16_mixed_precision_runs_on_the_cpu(tmp_path):
    from trainer.loop import Trainer

    root = make_faces(tmp_path / "faces", 6)
    cfg = load_cfg("pgdiff_restorer_tiny.yaml", tiny_overrides(tmp_path / "run", root, max_steps=2, mixed_precision="bf16",
                                                               gradient_checkpointing=True, **{"log.every": 1}))
    trainer = Trainer(cfg)
    assert trainer.accelerator.mixed_precision == "bf16"
    result = trainer.run(export=False)
    assert result.step == 2 and all(np.isfinite(h["train/loss"]) for h in result.history if "train/loss" in h)

"""PLTrans's three training stages through the trainer: dictionary → regulariser → restoration, each from the last."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .test_trainer import fresh_accelerate  # noqa: F401 - autouse: a clean Accelerate state per test
from .test_trainer import CONFIGS, REPO, SHARED_HQ, assert_resumes_exactly, real_config, reset_accelerate



def _series(result, key: str) -> list[float]:
    return [h[key] for h in result.history if key in h]


def test_chain_per_batch_is_drawn_on_the_host_and_reproducible():
    from trainer.stages.pltrans import RestorationOptions, chain_for_batch

    o = RestorationOptions()
    draws = [chain_for_batch(o, 0, micro) for micro in range(200)]
    assert all(50 <= n <= 400 and s == n // 10 and steps == 4 for n, s, steps in draws)
    assert len({n for n, _, _ in draws}) > 50 and draws == [chain_for_batch(o, 0, m) for m in range(200)]
    assert chain_for_batch(RestorationOptions(n_min=3, n_max=3, s_divisor=2, steps=4), 0, 0) == (3, 1, 2)


@pytest.mark.data
def test_code_loss_needs_the_dictionary(tmp_path):
    from trainer.config import ConfigError
    from trainer.loop import Trainer

    with pytest.raises(ConfigError, match="code_weight must be ≥ 0"):
        real_config("pltrans_restoration_tiny.yaml", tmp_path, **{"stage_options.code_weight": -1.0})
    cfg = real_config("pltrans_restoration_tiny.yaml", tmp_path,
                      **{"models.restorer.init": None, "models.restorer.use_dictionary": False})
    with pytest.raises(ConfigError, match="no dictionary .*set code_weight: 0"):
        Trainer(cfg)


@pytest.mark.data
def test_three_stages_chain_through_their_exports(tmp_path, caplog):
    from bfr_core.pipelines.pltrans import PLTransPipeline
    from bfr_core.weights import load_model
    from trainer.loop import Trainer, train

    # Stage 1: the HQ dictionary (VQGAN + PatchGAN from step 40).
    first = train(real_config("pltrans_dictionary_tiny.yaml", tmp_path / "dictionary"))
    l1 = _series(first, "train/l1")
    assert len(l1) == 6 and np.mean(l1[-2:]) < 0.8 * l1[0], l1
    assert "train/d_loss" in first.history[-2] and "val/psnr_restored" in first.metrics
    dictionary_file = first.export_dir / "model.safetensors"
    dictionary = load_model(dictionary_file, cache=False)
    assert dictionary.architecture == "vqgan_dictionary" and dictionary.config.n_embed == 64

    # Stage 2: R on the frozen dictionary encoder; the EMA is started at step 0 here, so the export must get the
    # calibrated latent_scale from the trained model rather than a lagging average.
    reset_accelerate()
    trainer = Trainer(real_config("pltrans_regularizer_tiny.yaml", tmp_path / "regularizer",
                              **{"models.model.dictionary": str(dictionary_file), "ema.start_step": 0}))
    model = trainer.accelerator.unwrap_model(trainer.models["model"])
    vq = dictionary.model
    assert torch.equal(model.prior.codebook, vq.quantize.embedding.weight)
    assert torch.equal(model.encoder.conv_in.weight, vq.encoder.conv_in.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="trainer.stages.pltrans"):
        second = trainer.run()
    assert "latent_scale" in caplog.text
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"regularizer"}, changed  # only R learns; E, P, the cross-attention and G stay as built
    cons = _series(second, "train/cons")
    assert len(cons) == 6 and np.mean(cons[-2:]) < 0.7 * cons[0], cons
    dif = _series(second, "train/dif")
    assert dif[0] == 0.0 and all(v > 0 for v in dif[1:])  # the diffusion loss starts after the 5-step warm-up
    assert {"val/dist_regularised", "val/dist_degraded", "val/psnr_restored"} <= set(second.metrics)
    regularizer_file = second.export_dir / "model.safetensors"
    exported = load_model(regularizer_file, cache=False)
    assert exported.architecture == "pltrans"
    scale = float(model.regularizer.latent_scale)
    assert scale != 1.0 and float(exported.model.regularizer.latent_scale) == scale

    # Stage 3: the restoration network from the stage-2 export, against a PatchGAN from step 25.
    reset_accelerate()
    trainer = Trainer(real_config("pltrans_restoration_tiny.yaml", tmp_path / "restoration",
                              **{"models.restorer.init": str(regularizer_file)}))
    restorer = trainer.accelerator.unwrap_model(trainer.models["restorer"])
    assert float(restorer.regularizer.latent_scale) == scale
    third = trainer.run()
    l1 = _series(third, "train/l1")
    code = _series(third, "train/code")  # the code loss (weight 1) shares E's and P's updates with L1
    assert len(l1) == 8 and np.mean(l1[-2:]) < 0.95 * l1[0], l1
    assert np.mean(code[-2:]) < 0.9 * code[0], code
    last = third.history[-2]
    assert {"train/d_loss", "train/g_adv", "train/reg_dif", "train/r_first", "train/n", "train/code",
            "train/code_hits"} <= set(last)
    assert 0 <= last["train/code_hits"] <= 1
    assert 20 <= last["train/n"] <= 100 and "val/psnr_restored" in third.metrics
    assert torch.equal(restorer.prior.codebook, vq.quantize.embedding.weight)  # V stays frozen

    final = load_model(third.export_dir / "model.safetensors", cache=False)
    assert final.architecture == "pltrans" and final.config.resolution == 32
    pipe = PLTransPipeline(final.model, device="cpu", n=60, s=6, steps=3)
    faces = torch.rand(2, 3, 32, 32) * 2 - 1
    out = pipe.restore_faces(faces, seed=1)
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    assert torch.equal(out, pipe.restore_faces(faces, seed=1))

    # The export is what the PLTrans loader node lists and runs.
    from tests import comfy_harness as harness

    pack = harness.load_pack(tmp_path / "comfy")
    import folder_paths

    models_dir = Path(folder_paths.models_dir) / "bfr"
    models_dir.mkdir(parents=True)
    shutil.copyfile(third.export_dir / "model.safetensors", models_dir / "my-pltrans.safetensors")
    node_pipe = harness.run(pack["BFRPLTransLoader"], model="my-pltrans.safetensors", precision="fp32",
                            n=60, s=6, steps=3).args[0]
    image = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    restored = harness.run(pack["BFRPLTransRestore"], pltrans=node_pipe, image=image, n=60, s=6, steps=3, seed=1,
                           batch_size=2).args[0]
    assert restored.shape == (2, 32, 32, 3) and torch.isfinite(restored).all()
    assert 0 <= float(restored.min()) and float(restored.max()) <= 1


RESUME = {  # every stage from random weights, with its GAN phase or calibration inside the short run
    "pltrans_dictionary_tiny.yaml": {"stage_options.disc_start": 1, "stage_options.restart_every": 2,
                                     "stage_options.restart_until": 4},  # dead codes restart at steps 0 and 2
    "pltrans_regularizer_tiny.yaml": {"models.model.dictionary": None, "stage_options.warmup_steps": 2},
    "pltrans_restoration_tiny.yaml": {"models.restorer.init": None, "stage_options.disc_start": 1},
}


@pytest.mark.data
@pytest.mark.parametrize("config", RESUME)
def test_stage_resumes_exactly(tmp_path, config):
    """Stopped after step 2 and resumed, each stage (per-batch chains, GAN phases, the latent_scale calibration
    and a dead-code restart at the resume point) ends where an unbroken 4-step run ends."""
    whole, resumed = assert_resumes_exactly(tmp_path, config, RESUME[config])
    if "stage_options.restart_every" in RESUME[config]:  # the restart at step 2 (logged as step 3) moved codes
        for result in (whole, resumed):
            restarted = {h["step"]: h["train/restarted_codes"] for h in result.history if "train/restarted_codes" in h}
            assert restarted[3] > 0 and restarted[4] == 0


def test_vgg_feature_loss_is_eq10s_perceptual_term():
    from trainer.config import LossSpec
    from trainer.losses import build_losses

    losses = build_losses([LossSpec.from_raw({"type": "vgg_feature", "random_init": True}, "l")], torch.device("cpu"))
    assert "RANDOM INIT" in losses.describe()[0]
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    pred = target.clone().requires_grad_(True)
    same, _ = losses(pred, target)
    assert float(same.detach()) == 0.0
    worse, _ = losses(pred + 0.3 * torch.randn_like(pred), target)
    worse.backward()
    assert float(worse.detach()) > 0 and pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in losses.parameters())


@pytest.mark.data
def test_accelerate_launch_runs_a_pltrans_stage(tmp_path):
    """`accelerate launch --cpu --num_processes 1 trainer/train.py --config ...` trains, saves and exports."""
    if not SHARED_HQ.is_dir():
        pytest.skip(f"real faces not found at {SHARED_HQ} (they live beside the repository, never inside it)")
    out = tmp_path / "run"
    overrides = {"output_dir": str(out), "data.root": str(SHARED_HQ), "max_steps": 3, "stage_options.disc_start": 2,
                 "checkpoint.every": 3, "log.every": 1, "log.sample_every": 3, "log.val_every": 3,
                 "log.progress_bar": False}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "trainer/train.py",
           "--config", str(CONFIGS / "pltrans_dictionary_tiny.yaml"), *(f"{k}={v}" for k, v in overrides.items())]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from bfr_core.weights import load_model

    assert (out / "checkpoints" / "step-00000003" / "COMPLETE").is_file() and (out / "samples" / "step-00000003.png").is_file()
    metrics = json.loads((out / "export" / "metrics.json").read_text())
    assert metrics["step"] == 3 and "val/d_loss" in metrics  # the GAN phase ran from step 2
    assert "on cpu × 1" in (out / "train.log").read_text()
    loaded = load_model(out / "export" / "model.safetensors", cache=False)
    assert loaded.architecture == "vqgan_dictionary" and loaded.config.n_embed == 64
    assert "pltrans_dictionary" in (out / "export" / "README.md").read_text()


@pytest.mark.data
def test_small_run_script_chains_the_cpu_configs(tmp_path):
    """trainer/small_runs.sh (SCALE=cpu): the three 64 px PLTrans stages, each from the last one's export."""
    if not SHARED_HQ.is_dir():
        pytest.skip(f"needs the shared HQ faces at {SHARED_HQ}")
    installed = Path.home() / ".cache" / "bfr" / "metrics" / "lpips_alex.safetensors"  # the CPU recipes use LPIPS
    if not installed.is_file():
        pytest.skip("needs the LPIPS-AlexNet weights (python -m bfr_core.metrics lpips --download)")
    (Path(os.environ["BFR_HOME"]) / "metrics").mkdir(parents=True, exist_ok=True)
    shutil.copy(installed, Path(os.environ["BFR_HOME"]) / "metrics" / installed.name)
    out = tmp_path / "runs"
    env = {**os.environ, "SCALE": "cpu", "METHODS": "pltrans", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "trainer" / "small_runs.sh"), str(SHARED_HQ), str(out), "max_steps=2",
                           "max_minutes=null", "log.every=1", "log.val_every=2", "log.tracker=none"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "pltrans chain exit 0" in proc.stdout, proc.stdout + proc.stderr
    for stage in ("pltrans_dictionary", "pltrans_regularizer", "pltrans_restoration"):
        assert (out / stage / "export" / "model.safetensors").is_file(), (out / f"{stage}.log").read_text()[-2000:]
    assert "from the dictionary " + str(out / "pltrans_dictionary") in (out / "pltrans_regularizer.log").read_text()
    rows = [json.loads(line) for line in (out / "pltrans_restoration" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/psnr_restored" in r][-1]
    assert val["step"] == 2 and 0 < val["val/psnr_degraded"] < 60  # held-out faces, degraded as configured


def test_plot_runs_draws_loss_and_validation_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from bfr_core.errors import InputError
    from trainer.plot_runs import last_validation, main, read_metrics

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "train/loss": 1.0 / s} for s in (10, 20, 30)]
    rows += [{"step": s, "val/psnr_restored": 20 + s / 10, "val/psnr_degraded": 21.0, "val/lpips_restored": 0.5 - s / 100,
              "val/lpips_degraded": 0.4} for s in (20, 30)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert last_validation(read_metrics(run))["val/psnr_restored"] == 23.0
    assert main([str(run), "-o", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="metrics.jsonl"):
        read_metrics(tmp_path / "missing")

"""VSPBFR's stage-1 (style encoder) and stage-3 (restoration) training, and the identity network they train with."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from .test_trainer import fresh_accelerate  # noqa: F401 - autouse: a clean Accelerate state per test
from .test_trainer import assert_resumes_exactly, real_config, reset_accelerate



def _states(trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(m).state_dict().items()}
            for n, m in trainer.models.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- stage 1


def test_progressive_deltas_follow_e4e():
    from trainer.stages.vspbfr import StyleEncoderOptions, progressive_stage

    o = StyleEncoderOptions(progressive_start=20_000, progressive_every=2_000)
    assert [progressive_stage(o, s, 18) for s in (0, 19_999, 20_000, 21_999, 22_000, 52_000, 10**6)] == [0, 0, 1, 1, 2, 17, 17]
    assert progressive_stage(StyleEncoderOptions(progressive_start=None), 5, 18) == 18  # every row, no delta loss


def test_latent_pool_is_e4es_codes_pool():
    """Fill first; then each code is returned as is or swapped for a stored one (½ each); state is in the buffers."""
    from bfr_core.models.latent_discriminator import LatentCodesDiscriminator, LatentDiscriminatorConfig

    d = LatentCodesDiscriminator(LatentDiscriminatorConfig(style_dim=3, n_mlp=2, pool_size=4))
    first = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(d.query_pool("real", first, 0, torch.Generator().manual_seed(0)), first)
    assert torch.equal(d.real_pool[:2], first) and not d.real_pool[2:].any() and not d.fake_pool.any()
    rows = torch.arange(24.0).reshape(2, 4, 3)  # multi-row codes: one random row per sample
    picked = d.query_pool("real", rows, 2, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(p, r) for r in rows[i]) for i, p in enumerate(picked))
    assert torch.equal(d.real_pool[2:], picked)
    full = d.real_pool.clone()
    returned, swapped = 0, 0
    for i in range(20):
        new = torch.stack([torch.full((3,), 100.0 + i), torch.full((3,), 200.0 + i)])
        out = d.query_pool("real", new, 4, torch.Generator().manual_seed(i))
        for j in range(2):
            if torch.equal(out[j], new[j]):
                returned += 1
            else:  # a code stored before, or one this call stored for an earlier sample (e4e is sequential)
                assert any(torch.equal(out[j], row) for row in [*full, *new[:j]]), "a swapped code must come from the pool"
                swapped += 1
        stored = [any(torch.equal(row, n) for row in d.real_pool) for n in new]
        if not torch.equal(out[1], new[1]):
            assert stored[1]  # the last sample swapped: it is in the pool now
        if torch.equal(out[0], new[0]) and torch.equal(out[1], new[1]):
            assert not any(stored) and torch.equal(d.real_pool, full)  # nothing swapped: the pool is unchanged
        full = d.real_pool.clone()
    assert returned > 5 and swapped > 5
    assert {"real_pool", "fake_pool"} <= set(d.state_dict())  # saved with the discriminator's training state
    no_pool = LatentCodesDiscriminator(LatentDiscriminatorConfig(style_dim=3, n_mlp=2, pool_size=0))
    assert torch.equal(no_pool.query_pool("fake", rows, 0, torch.Generator()), rows[:, 0])


def _install(models_dir: Path, name: str, src: Path) -> str:
    """Copy an exported file into the harness's models/bfr under ``name`` (what a user does)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, models_dir / name)
    return name


@pytest.mark.data
def test_stages_1_and_3_learn_and_their_exports_run_in_the_vspbfr_loader(tmp_path):
    """Stage 1 learns and exports e4e + its decoder in one file; stage 3 starts its frozen helpers from that file,
    learns, and the two exports (with a code diffuser) load and restore through the VSPBFR loader node."""
    from bfr_core.weights import inspect_checkpoint, load_model, save_model
    from trainer.loop import Trainer

    # Stage 1: the style encoder.
    out = tmp_path / "style_encoder"
    trainer = Trainer(real_config("vspbfr_style_encoder_tiny.yaml", out))
    before = _states(trainer)
    result = trainer.run()
    after = _states(trainer)
    assert _same(before["decoder"], after["decoder"])  # the StyleGAN2 decoder is frozen
    assert not _same(before["encoder"], after["encoder"]) and not _same(before["w_discriminator"], after["w_discriminator"])
    assert after["w_discriminator"]["fake_pool"].abs().sum() > 0  # the pools filled
    history = [h for h in result.history if "train/mse" in h]
    mse = [h["train/mse"] for h in history]
    assert len(mse) == 6 and np.mean(mse[-2:]) < 0.5 * mse[0], mse
    assert [h["train/progressive_stage"] for h in history][:2] == [0.0, 0.0] and history[-1]["train/progressive_stage"] >= 3
    assert history[-1]["train/delta_norm"] > 0 and {"train/w_d_loss", "train/w_r1", "train/w_adv"} <= set(history[0])
    assert result.metrics["val/psnr_restored"] > 8 and (out / "samples" / "step-00000030.png").is_file()

    style_file = out / "export" / "model.safetensors"
    found = {a["architecture"]: a["prefix"] for a in inspect_checkpoint(style_file)["architectures"]}
    assert found == {"vspbfr_e4e_encoder": "encoder.", "stylegan2_generator": "decoder."}, found
    assert "`decoder.*` = `stylegan2_generator`" in (out / "export" / "README.md").read_text()
    encoder = trainer.accelerator.unwrap_model(trainer.models["encoder"])
    loaded = load_model(style_file, "vspbfr_e4e_encoder", cache=False)
    assert loaded.config == encoder.config and torch.equal(loaded.model.latent_avg, encoder.latent_avg)
    assert encoder.latent_avg.any()
    decoder = load_model(style_file, "stylegan2_generator", cache=False)
    assert decoder.config == trainer.accelerator.unwrap_model(trainer.models["decoder"]).config
    assert _same(decoder.model.state_dict(), after["decoder"])

    # Stage 3: the restoration network, its frozen e4e and decoder from the stage-1 export.
    reset_accelerate()
    out = tmp_path / "restoration"
    trainer = Trainer(real_config("vspbfr_restoration_tiny.yaml", out, **{
        "models.encoder.init": str(style_file), "models.decoder.init": str(style_file)}))
    before = _states(trainer)
    assert _same(before["encoder"], loaded.model.state_dict()) and _same(before["decoder"], after["decoder"])
    result = trainer.run()
    after = _states(trainer)
    for frozen in ("encoder", "decoder", "diffuser"):
        assert _same(before[frozen], after[frozen]), frozen
    assert not _same(before["restorer"], after["restorer"]) and not _same(before["discriminator"], after["discriminator"])
    history = [h for h in result.history if "train/l1" in h]
    l1 = [h["train/l1"] for h in history]
    assert len(l1) == 6 and np.mean(l1[-2:]) < 0.6 * l1[0], l1
    assert {"train/d_loss", "train/g_adv", "train/r1", "lr/discriminator"} <= set(history[0])
    assert result.metrics["val/psnr_restored"] > 8
    from PIL import Image

    with Image.open(out / "samples" / "step-00000030.png") as grid:  # degraded | prior | restored | target
        assert grid.size[0] == 4 * 34 + 2
    restorer_file = out / "export" / "model.safetensors"
    restorer = load_model(restorer_file, cache=False)  # found by detection alone
    assert restorer.architecture == "vspbfr_restoration_net" and restorer.config.size == 32

    # The VSPBFR loader node reads the two exports (and the run's frozen diffuser, saved as a user would have it).
    from tests import comfy_harness as harness

    pack = harness.load_pack(tmp_path / "comfy")
    import folder_paths

    models_dir = Path(folder_paths.models_dir) / "bfr"
    diffuser_file = save_model(trainer.accelerator.unwrap_model(trainer.models["diffuser"]),
                               tmp_path / "diffuser.safetensors", "vspbfr_code_diffuser")
    pipe = harness.run(pack["BFRVSPBFRLoader"], precision="fp32",
                       style_encoder=_install(models_dir, "my-style-encoder.safetensors", style_file),
                       code_diffuser=_install(models_dir, "my-code-diffuser.safetensors", diffuser_file),
                       restorer=_install(models_dir, "my-restorer.safetensors", restorer_file)).args[0]
    assert _same(pipe.restorer.state_dict(), restorer.model.state_dict())
    image = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    restored = harness.run(pack["BFRVSPBFRRestore"], vspbfr=pipe, image=image, seed=3).args[0]
    assert restored.shape == (2, 32, 32, 3) and torch.isfinite(restored).all()
    assert 0 <= float(restored.min()) and float(restored.max()) <= 1


def test_batch_summed_losses_scale_with_the_batch():
    """The release sums LPIPS over the batch: the named terms are mean × B, the others stay means."""
    from trainer.config import LossSpec
    from trainer.losses import build_losses
    from trainer.stages import StepContext
    from trainer.stages.vspbfr import _image_losses

    losses = build_losses([LossSpec.from_raw({"type": "l1", "weight": 0.5}, "a"),
                           LossSpec.from_raw({"type": "mse", "weight": 2.0}, "b")], torch.device("cpu"))
    ctx = StepContext(models={}, options=None, losses=losses, device=torch.device("cpu"), seed=0)
    pred, target = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    total, parts = _image_losses(ctx, pred, target, ("l1",))
    assert torch.allclose(total, 0.5 * 3 * parts["l1"] + 2.0 * parts["mse"])


# ----------------------------------------------------------------------------------- identity network


def test_faceshifter_arcface_loads_the_release_layout_and_drives_the_identity_loss(tmp_path):
    """Arcface.pth is torchvision's resnet101(num_classes=256): our module has its exact keys and loads strictly."""
    import torchvision

    from bfr_core.errors import WeightsError
    from bfr_core.models.faceshifter_arcface import FaceShifterArcFace
    from bfr_core.weights import load_model
    from trainer.config import LossSpec
    from trainer.losses import build_losses

    with torch.device("meta"):
        ours, ref = FaceShifterArcFace(), torchvision.models.resnet101(num_classes=256)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert sum(p.numel() for p in ours.parameters()) == 43_024_704

    # A small stand-in of the same family (one bottleneck per stage), saved as the release saves it: a .pth state dict.
    torch.manual_seed(0)
    small = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=256).eval()
    path = tmp_path / "Arcface.pth"
    torch.save(small.state_dict(), path)
    loaded = load_model(path, cache=False)
    assert loaded.architecture == "faceshifter_arcface_r101" and loaded.config.layers == (1, 1, 1, 1)
    face = torch.rand(2, 3, 64, 64) * 2 - 1
    want = small(torch.nn.functional.interpolate(face, size=112, mode="bilinear"))
    assert torch.allclose(loaded.model.embed(face), want, atol=1e-5)

    losses = build_losses([LossSpec.from_raw({"type": "identity", "weights": str(path)}, "l")], torch.device("cpu"))
    assert "FaceShifter" in losses.describe()[0]
    same, parts = losses(face, face)
    other, _ = losses(face, face.flip(0))
    assert float(same) < 1e-5 < float(other)
    with pytest.raises(WeightsError, match="Arcface.pth"):
        build_losses([LossSpec.from_raw({"type": "identity", "weights": "vspbfr-arcface"}, "l")], torch.device("cpu"))


RESUME = {
    # pools, R1 and progressive steps inside the short run
    "vspbfr_style_encoder_tiny.yaml": {"stage_options.progressive_start": 2, "stage_options.progressive_every": 1,
                                       "stage_options.r1_every": 2},
    "vspbfr_restoration_tiny.yaml": {"stage_options.r1_every": 2},
}


@pytest.mark.data
@pytest.mark.parametrize("config", RESUME)
def test_stage_resumes_exactly(tmp_path, config):
    """Stopped after step 2 and resumed, the stage ends where an unbroken 4-step run ends (weights and loss)."""
    assert_resumes_exactly(tmp_path, config, RESUME[config])

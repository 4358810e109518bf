"""PGDiff nodes on tiny random weights (32 px, a few steps): loaders, each guidance term node and their chaining, the
task presets, the Partial Guidance Sampler (equal to the core pipeline, progress with previews, interruption)
and the PGDiff Face Restorer. The workflows run in tests/test_nodes.py (stand-in) and in a real ComfyUI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bfr_core import images
from bfr_core.errors import InputError, WeightsError
from tests import comfy_harness as harness

STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_pgdiff")
    pack = harness.load_pack(base)
    import folder_paths

    from tests import tiny_weights

    models = Path(folder_paths.models_dir) / "bfr"
    models.mkdir(parents=True, exist_ok=True)
    subs = tiny_weights.write_pgdiff(models)
    with pytest.MonkeyPatch.context() as mp:  # module setup runs before the per-test cache isolation
        mp.setenv("BFR_HOME", str(base / "bfr_home"))
        prior = harness.run(pack["BFRPGDiffPriorLoader"], ddpm=subs["difface-ddpm-ffhq512 (auto-download)"], precision="fp32").args[0]
        restorer = harness.run(pack["BFRPGDiffRestorerLoader"], restorer=subs["pgdiff-restorer-rrdb (auto-download)"]).args[0]
        arcface = harness.run(pack["BFRArcFaceLoader"], arcface=subs["arcface-ms1mv3-r50 (auto-download)"]).args[0]
    return {"pack": pack, "prior": prior, "restorer": restorer, "arcface": arcface, "subs": subs}


def run(env, node: str, **kw):
    return harness.run(env["pack"][node], **kw).args


def _image(n=2, size=40, seed=0, channels=3):
    return torch.rand(n, size, size, channels, generator=torch.Generator().manual_seed(seed))


def test_loaders_cache_freeze_and_name_the_licence(env):
    from bfr_core.models.adm_unet import ADMUNet
    from bfr_core.models.arcface import IResNet
    from bfr_core.models.rrdb_restorer import RRDBRestorer
    from bfr_core.pipelines.pgdiff import PGDiffPipeline

    prior, restorer, arcface = env["prior"], env["restorer"], env["arcface"]
    assert isinstance(prior, PGDiffPipeline) and isinstance(prior.unet, ADMUNet) and prior.size == 32
    assert isinstance(restorer, RRDBRestorer) and isinstance(arcface, IResNet)
    for net in (prior.unet, restorer, arcface):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
    again = run(env, "BFRPGDiffPriorLoader", ddpm=env["subs"]["difface-ddpm-ffhq512 (auto-download)"], precision="fp32")[0]
    assert again is prior, "a loader keeps what it built"
    for node, words in (("BFRPGDiffPriorLoader", "S-Lab"), ("BFRPGDiffRestorerLoader", "S-Lab"), ("BFRArcFaceLoader", "insightface")):
        schema = env["pack"][node].define_schema()
        assert words in schema.description and "non-commercial" in schema.description
        assert schema.inputs[0].options[0].endswith("(auto-download)")
    with pytest.raises(WeightsError, match="not found"):
        env["pack"]["BFRPGDiffRestorerLoader"].execute(restorer="missing.safetensors")  # a file removed since listing


def test_a_weights_file_replaced_under_the_same_name_is_loaded_again(env):
    """The loaders' cache is keyed by the file (path, size, mtime), not only by the name in the combo."""
    import copy
    import os

    import folder_paths

    from bfr_core.weights import save_model

    path = Path(folder_paths.models_dir) / "bfr" / "replaced_rrdb.safetensors"
    save_model(env["restorer"], path, "pgdiff_rrdb_restorer")
    first = run(env, "BFRPGDiffRestorerLoader", restorer=path.name)[0]
    assert run(env, "BFRPGDiffRestorerLoader", restorer=path.name)[0] is first
    changed = copy.deepcopy(env["restorer"])
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    save_model(changed, path, "pgdiff_rrdb_restorer")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a new mtime even on coarse clocks
    second = run(env, "BFRPGDiffRestorerLoader", restorer=path.name)[0]
    assert second is not first
    torch.testing.assert_close(next(second.parameters()), next(changed.parameters()))


def test_prior_loader_reads_the_official_file_and_logs_its_s_lab_licence(env, caplog):
    """The workflows' choice "difface-ddpm-ffhq512 (auto-download)" finds DifFace's file (official name, ``module.``
    pickle layout) in models/bfr instead of downloading it, and the log names its S-Lab non-commercial licence."""
    import sys

    import folder_paths

    from bfr_core.models.adm_unet import ADMUNet, ADMUNetConfig

    nodes = sys.modules[f"{harness.PACK_NAME}.nodes.pgdiff"]
    unet = ADMUNet(ADMUNetConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                                 attention_resolutions=(16,), num_head_channels=32)).eval()
    official = Path(folder_paths.models_dir) / "bfr" / "iddpm_ffhq512_ema500000.pth"
    torch.save({f"module.{k}": v for k, v in unet.state_dict().items()}, official)
    kept = nodes._cache.pop("prior")
    try:
        with caplog.at_level(logging.INFO):
            prior = run(env, "BFRPGDiffPriorLoader", ddpm="difface-ddpm-ffhq512 (auto-download)", precision="fp32")[0]
    finally:
        official.unlink()
        nodes._cache["prior"] = kept
    notice = [r.getMessage() for r in caplog.records if "difface-ddpm-ffhq512: NTU S-Lab License 1.0" in r.getMessage()]
    assert notice and all("Non-commercial use only" in m for m in notice)
    got = prior.unet.state_dict()
    assert all(torch.equal(got[k], v) for k, v in unet.state_dict().items())


def test_term_nodes_chain_and_keep_the_incoming_guidance(env):
    from bfr_core.guidance import (
        Adversarial,
        ColorStatistics,
        CompositeGuidance,
        IdentityReference,
        Lightness,
        Perceptual,
        SmoothSemantics,
        UnmaskedRegion,
        color_stats,
    )

    target, ref, mask = _image(2, seed=1), _image(1, seed=2), torch.zeros(2, 40, 40)
    mask[:, :10] = 1
    g0 = run(env, "BFRPGDiffGuidanceSmoothSemantics", restorer=env["restorer"], weight=2.0, start=0.9, stop=0.1, n_steps=2)[0]
    assert isinstance(g0, CompositeGuidance) and (g0.update, g0.scale) == ("classic", 0.1)
    g1 = run(env, "BFRPGDiffGuidanceSmoothSemantics", guidance=g0, target_image=target)[0]
    g2 = run(env, "BFRPGDiffGuidanceLightness", guidance=g1, mask=mask)[0]
    g3 = run(env, "BFRPGDiffGuidanceColorStatistics", guidance=g2, reference=ref)[0]
    g4 = run(env, "BFRPGDiffGuidanceColorStatistics", guidance=g3)[0]
    g5 = run(env, "BFRPGDiffGuidanceUnmaskedRegion", guidance=g4, mask=mask[0])[0]
    g6 = run(env, "BFRPGDiffGuidanceIdentity", guidance=g5, arcface=env["arcface"], reference=ref, metric="cosine", weight=1e4)[0]
    g7 = run(env, "BFRPGDiffGuidancePerceptual", guidance=g6, vgg="tiny_vgg16.safetensors", restorer=env["restorer"])[0]
    g8 = run(env, "BFRPGDiffGuidanceGAN", guidance=g7, discriminator="tiny_vspbfr_discriminator.safetensors")[0]

    kinds = [SmoothSemantics, SmoothSemantics, Lightness, ColorStatistics, ColorStatistics, UnmaskedRegion,
             IdentityReference, Perceptual, Adversarial]
    assert [type(t) for t in g8.terms] == kinds
    for k, g in enumerate((g0, g1, g2, g3, g4, g5, g6, g7)):
        assert g8.terms[: k + 1] == g.terms and len(g.terms) == k + 1, "each node adds one term; its input is unchanged"
    ss, img_ss, light, col_ref, col, unmasked, ident, perc, gan = g8.terms
    assert (ss.target, ss.weight, ss.start, ss.stop, ss.n_steps) == (env["restorer"], 2.0, 0.9, 0.1, 2)
    torch.testing.assert_close(img_ss.target, images.to_model(target))
    assert light.target is None and light.mask.shape == (2, 40, 40) and light.hole() is not None
    mean, std = color_stats(images.to_model(ref), average=True)
    torch.testing.assert_close(torch.as_tensor(col_ref.mean), mean)
    torch.testing.assert_close(torch.as_tensor(col_ref.std), std)
    assert tuple(col.mean) == pytest.approx((0.03202754, -0.16308397, -0.26475719)) and col.weight == 0.05
    assert unmasked.mask.shape == (1, 40, 40) and unmasked.target is None
    assert ident.arcface is env["arcface"] and ident.metric == "cosine" and ident.weight == 1e4
    assert perc.target is env["restorer"] and len(perc.vgg) == 30 and perc.weight == 0.01
    assert gan.discriminator.config.size == 32

    # the whole chain samples, and each network is placed with the prior
    import comfy.model_management as mm

    mm.LOADED.clear()
    out = run(env, "BFRPartialGuidanceSampler", prior=env["prior"], image=_image(2, seed=3), guidance=g8, steps=STEPS)[0]
    assert out.shape == (2, 32, 32, 3) and torch.isfinite(out).all()
    placed = {id(p.model) for p in mm.LOADED}
    assert {id(env["prior"].unet), id(env["restorer"]), id(env["arcface"]), id(perc.vgg), id(gan.discriminator)} <= placed


def test_term_nodes_refuse_bad_inputs(env, monkeypatch, tmp_path):
    with pytest.raises(InputError, match="either a restorer or a target image"):
        run(env, "BFRPGDiffGuidanceSmoothSemantics", restorer=env["restorer"], target_image=_image(1))
    with pytest.raises(InputError, match="stop ≤ start"):
        run(env, "BFRPGDiffGuidanceLightness", start=0.2, stop=0.5)
    with pytest.raises(InputError, match="connect a guidance term"):
        run(env, "BFRPGDiffGuidanceLightness", guidance="restoration")
    with pytest.raises(InputError, match="MASK"):
        run(env, "BFRPGDiffGuidanceUnmaskedRegion", mask=torch.zeros(1, 1, 8, 8))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision download cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="download.pytorch.org"):
        run(env, "BFRPGDiffGuidancePerceptual", vgg="vgg16-imagenet (auto-download)")
    with pytest.raises(WeightsError, match="download.pytorch.org"):  # the file name, as saved before the registry entry
        env["pack"]["BFRPGDiffGuidancePerceptual"].execute(vgg="vgg16-397923af.pth", weight=0.01, start=1.0, stop=0.0, n_steps=1)


def test_perceptual_node_downloads_torchvisions_vgg_into_models_bfr(env, monkeypatch, tmp_path):
    """'vgg16-imagenet (auto-download)' fetches torchvision's file (here a tiny stand-in from a loopback server) into
    models/bfr once, pins its sha256, and then finds it there; torchvision's own download cache is used when present."""
    import dataclasses
    import hashlib
    import sys

    import folder_paths

    from bfr_core.weights import fetch, registry
    from tests import hub_server, tiny_weights

    nodes = sys.modules[f"{harness.PACK_NAME}.nodes.pgdiff"]
    entry = registry.KNOWN["vgg16-imagenet"]
    assert entry.filename == "vgg16-397923af.pth" and "BSD-3-Clause" in entry.licence and not entry.non_commercial
    assert entry.sources == (registry.UrlSource("https://download.pytorch.org/models/vgg16-397923af.pth"),)
    schema = env["pack"]["BFRPGDiffGuidancePerceptual"].define_schema()
    assert schema.inputs[0].options[0] == "vgg16-imagenet (auto-download)"

    vgg = tiny_weights.pgdiff_models()["vgg"]
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, tmp_path / "vgg.pth")  # torchvision's layout
    data = (tmp_path / "vgg.pth").read_bytes()
    hub = hub_server.FakeHub()
    hub.files["raw/vgg16-397923af.pth"] = data
    server = hub_server.start(hub)
    monkeypatch.setitem(registry.KNOWN, entry.id, dataclasses.replace(entry, sources=(registry.UrlSource(f"{hub.url}/raw/vgg16-397923af.pth"),)))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    target = Path(folder_paths.models_dir) / "bfr" / "vgg16-397923af.pth"
    nodes._cache.pop("vgg", None)
    try:
        g = run(env, "BFRPGDiffGuidancePerceptual", vgg="vgg16-imagenet (auto-download)", target_image=_image(1))[0]
        assert target.read_bytes() == data and [p for _, p in hub.requests] == ["/raw/vgg16-397923af.pth"]
        assert fetch.expected_sha256(registry.KNOWN[entry.id]) == hashlib.sha256(data).hexdigest(), "pinned at first download"
        x = torch.rand(1, 3, 32, 32)
        torch.testing.assert_close(g.terms[0].vgg(x), vgg[: len(g.terms[0].vgg)](x), rtol=0, atol=0)
        nodes._cache.pop("vgg")
        run(env, "BFRPGDiffGuidancePerceptual", vgg="vgg16-imagenet (auto-download)")
        assert len(hub.requests) == 1, "found in models/bfr, not downloaded again"

        target.unlink()  # torchvision's cache instead of a second download
        cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
        cached.parent.mkdir(parents=True)
        cached.write_bytes(data)
        nodes._cache.pop("vgg")
        run(env, "BFRPGDiffGuidancePerceptual", vgg="vgg16-imagenet (auto-download)")
        assert len(hub.requests) == 1 and not target.exists()
    finally:
        server.shutdown()
        target.unlink(missing_ok=True)
        nodes._cache.pop("vgg", None)


@pytest.mark.parametrize("task", ["restoration", "colorization", "inpainting", "old photo restoration",
                                  "reference-based restoration"])
def test_task_preset_node_gives_the_released_guidance(env, task):
    from bfr_core.guidance import presets

    mask, ref, color = torch.zeros(1, 40, 40), _image(1, seed=4), _image(3, seed=5)
    mask[:, 20:] = 1
    m, r, c = mask, images.to_model(ref), images.to_model(color)
    restorer, arcface = env["restorer"], env["arcface"]
    kwargs, expected = {
        "restoration": ({"restorer": restorer}, presets.restoration(restorer, n_steps=2)),
        "colorization": ({"color_reference": color}, presets.colorization(color_reference=c, n_steps=2)),
        "inpainting": ({"mask": mask}, presets.inpainting(m, n_steps=2)),
        "old photo restoration": ({"restorer": restorer, "mask": mask},
                                  presets.old_photo_restoration(restorer, m, n_steps=2)),
        "reference-based restoration": ({"restorer": restorer, "arcface": arcface, "reference": ref},
                                        presets.ref_restoration(restorer, arcface, r, n_steps=2)),
    }[task]
    g = run(env, "BFRPGDiffTaskPreset", task=task, n_steps=2, **kwargs)[0]
    assert (g.scale, g.update, g.norm, g.repeat_start, g.repeat_stop) == (
        expected.scale, expected.update, expected.norm, expected.repeat_start, expected.repeat_stop)
    assert [type(t) for t in g.terms] == [type(t) for t in expected.terms]
    for got, want in zip(g.terms, expected.terms):
        assert (got.weight, got.start, got.stop, got.n_steps) == (want.weight, want.start, want.stop, want.n_steps)
    for key in kwargs:  # each required input is named when missing
        if key in ("color_reference",) or (task == "old photo restoration" and key == "mask"):
            continue
        with pytest.raises(InputError, match=key):
            run(env, "BFRPGDiffTaskPreset", task=task, **{k: v for k, v in kwargs.items() if k != key})
    out = run(env, "BFRPartialGuidanceSampler", prior=env["prior"], image=_image(1, seed=6), guidance=g, steps=STEPS)[0]
    assert out.shape == (1, 32, 32, 3) and torch.isfinite(out).all()


def test_task_preset_keeps_chained_terms_and_warns_about_unused_inputs(env, caplog):
    extra = run(env, "BFRPGDiffGuidanceIdentity", arcface=env["arcface"], reference=_image(1))[0]
    with caplog.at_level(logging.WARNING, logger="bfr"):
        g = run(env, "BFRPGDiffTaskPreset", task="colorization", n_steps=1, guidance=extra, restorer=env["restorer"])[0]
    assert [t.name for t in g.terms] == ["lightness", "color_statistics", "identity"]
    assert (g.update, g.norm, g.scale) == ("dynamic", "channel", 0.01), "the preset's rule wins"
    assert "does not use restorer" in caplog.text


def test_sampler_node_is_the_pipeline_and_seeded(env):
    prior, restorer = env["prior"], env["restorer"]
    image = _image(3, size=48, seed=7)
    g = run(env, "BFRPGDiffTaskPreset", task="restoration", n_steps=1, restorer=restorer)[0]
    kw = dict(prior=prior, image=image, guidance=g, steps=STEPS, batch_size=2)
    a = run(env, "BFRPartialGuidanceSampler", seed=11, **kw)[0]
    assert a.shape == (3, 32, 32, 3) and a.device.type == "cpu" and 0 <= a.min() and a.max() <= 1
    faces = images.fit_square(images.to_model(image), 32)
    core = prior.replace(steps=STEPS)(faces, 11, guidance=g, batch_size=2)
    torch.testing.assert_close(a, images.from_model(core), rtol=0, atol=0)
    torch.testing.assert_close(run(env, "BFRPartialGuidanceSampler", seed=11, **kw)[0], a, rtol=0, atol=0)
    assert (run(env, "BFRPartialGuidanceSampler", seed=12, **kw)[0] - a).abs().max() > 1e-3

    # scale and update override the preset's; ddim is deterministic given x_T
    forced = run(env, "BFRPartialGuidanceSampler", seed=11, scale=0.05, update="dynamic (per-channel norm)", sampler="ddim", **kw)[0]
    want = prior.replace(steps=STEPS, sampler="ddim")(faces, 11, guidance=g.replace(scale=0.05, update="dynamic", norm="channel"),
                                                       batch_size=2)
    torch.testing.assert_close(forced, images.from_model(want), rtol=0, atol=0)

    rgba = _image(1, size=32, seed=8, channels=4)
    out = run(env, "BFRPartialGuidanceSampler", prior=prior, image=rgba, guidance=g, steps=STEPS)[0]
    assert out.shape == (1, 32, 32, 4) and torch.equal(out[..., 3], rgba[..., 3]), "alpha passes through"
    with pytest.raises(InputError, match="FaceDetectCrop"):
        run(env, "BFRPartialGuidanceSampler", prior=prior, image=_image(1, size=40)[:, :, :30], guidance=g, steps=STEPS)


def test_sampler_node_and_face_restorer_never_depend_on_the_batch_size(env):
    """Every face has its own random stream: 3 faces at batch 3, 2 or 1 give the same result exactly (the networks
    run one face at a time, see OneAtATime), through the sampler node and through PGDiff Face Restorer's
    restore_faces, which Restore Faces calls (also after halving the batch on out-of-memory)."""
    import copy

    from tests.test_pgdiff_pipeline import OneAtATime

    prior = copy.copy(env["prior"])
    prior.unet = OneAtATime(env["prior"].unet)
    restorer = OneAtATime(env["restorer"])
    g = run(env, "BFRPGDiffTaskPreset", task="restoration", n_steps=1, restorer=restorer)[0]
    kw = dict(prior=prior, image=_image(3, size=48, seed=12), guidance=g, steps=STEPS, seed=3)
    whole = run(env, "BFRPartialGuidanceSampler", batch_size=3, **kw)[0]
    for batch in (1, 2):
        torch.testing.assert_close(run(env, "BFRPartialGuidanceSampler", batch_size=batch, **kw)[0], whole, rtol=0, atol=0)

    pipe = run(env, "BFRPGDiffFaceRestorer", prior=prior, restorer=restorer, steps=STEPS, sampler="ddim", scale=0.0,
               update="from guidance")[0]
    faces = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(13)) * 2 - 1
    restored = pipe.restore_faces(faces, 3, batch_size=3)
    for batch in (1, 2):
        torch.testing.assert_close(pipe.restore_faces(faces, 3, batch_size=batch), restored, rtol=0, atol=0)
    sampler = env["pack"]["BFRPartialGuidanceSampler"].define_schema()
    assert "never changes a result" in next(i for i in sampler.inputs if i.id == "batch_size").tooltip
    assert "never changes a result" in env["pack"]["BFRPGDiffFaceRestorer"].define_schema().description


def test_sampler_node_reports_progress_with_previews_and_can_be_interrupted(env):
    import comfy.model_management as mm
    import comfy.utils

    g = run(env, "BFRPGDiffTaskPreset", task="inpainting", n_steps=1, mask=torch.ones(1, 8, 8))[0]
    comfy.utils.UPDATES.clear()
    run(env, "BFRPartialGuidanceSampler", prior=env["prior"], image=_image(3), guidance=g, steps=STEPS, batch_size=2)
    assert [u[1:] for u in comfy.utils.UPDATES] == [(k, 2 * STEPS, True) for k in range(1, 2 * STEPS + 1)]

    def press_cancel_at_step_2(value, total, preview, node_id=None):
        if value == 2:
            mm.interrupt_current_processing(True)

    comfy.utils.UPDATES.clear()
    comfy.utils.PROGRESS_BAR_HOOK = press_cancel_at_step_2
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(env, "BFRPartialGuidanceSampler", prior=env["prior"], image=_image(3), guidance=g, steps=STEPS)
    finally:
        comfy.utils.PROGRESS_BAR_HOOK = None
    assert [u[1] for u in comfy.utils.UPDATES] == [1, 2], "the sampler stops right after the step where it was interrupted"
    assert not mm.processing_interrupted()


def test_face_restorer_node_feeds_restore_faces(env, caplog):
    from bfr_core.pipelines.base import FaceRestorer
    from bfr_core.pipelines.pgdiff import PGDiffPipeline

    prior, restorer = env["prior"], env["restorer"]
    pipe = run(env, "BFRPGDiffFaceRestorer", prior=prior, restorer=restorer, steps=STEPS, sampler="ddpm", scale=0.0,
               update="from guidance")[0]
    assert isinstance(pipe, PGDiffPipeline) and isinstance(pipe, FaceRestorer) and pipe is not prior
    assert pipe.unet is prior.unet and pipe.restorer is restorer and prior.restorer is None
    faces = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
    from bfr_core.guidance import presets

    torch.testing.assert_close(pipe.restore_faces(faces, 4, batch_size=2),
                               prior.replace(steps=STEPS)(faces, 4, guidance=presets.restoration(restorer)), rtol=0, atol=0)
    assert pipe.modules() == [prior.unet, restorer]

    # another guidance replaces the preset: the restorer input is then unused, said in the log, and not placed
    inpaint = run(env, "BFRPGDiffTaskPreset", task="inpainting", n_steps=1, mask=torch.ones(1, 8, 8))[0]
    with caplog.at_level(logging.WARNING, logger="bfr"):
        other = run(env, "BFRPGDiffFaceRestorer", prior=prior, restorer=restorer, guidance=inpaint, steps=STEPS,
                    sampler="ddim", scale=0.02, update="from guidance")[0]
    assert "restorer input is not used" in caplog.text
    assert other.modules() == [prior.unet]
    torch.testing.assert_close(other.restore_faces(faces, 4),
                               prior.replace(steps=STEPS, sampler="ddim")(faces, 4, guidance=inpaint.replace(scale=0.02)),
                               rtol=0, atol=0)
    # Restore Faces accepts it (the MultiType union lists BFR_PGDIFF)
    schema = env["pack"]["BFRRestoreFaces"].define_schema()
    assert "BFR_PGDIFF" in next(i for i in schema.inputs if i.id == "restorer").get_io_type().split(",")


def test_nodes_work_under_comfyuis_inference_mode(env):
    """ComfyUI runs every node under torch.inference_mode(): loaders, term nodes and the sampler must still give
    the guidance its gradients (through ArcFace, VGG and the discriminator too) and the same numbers."""
    import sys

    nodes = sys.modules[f"{harness.PACK_NAME}.nodes.pgdiff"]
    subs, image, ref = env["subs"], _image(2, seed=10), _image(1, seed=11)

    def graph():
        prior = run(env, "BFRPGDiffPriorLoader", ddpm=subs["difface-ddpm-ffhq512 (auto-download)"], precision="fp32")[0]
        restorer = run(env, "BFRPGDiffRestorerLoader", restorer=subs["pgdiff-restorer-rrdb (auto-download)"])[0]
        arcface = run(env, "BFRArcFaceLoader", arcface=subs["arcface-ms1mv3-r50 (auto-download)"])[0]
        g = run(env, "BFRPGDiffTaskPreset", task="reference-based restoration", n_steps=1, restorer=restorer,
                arcface=arcface, reference=ref)[0]
        g = run(env, "BFRPGDiffGuidanceColorStatistics", guidance=g, reference=ref)[0]
        g = run(env, "BFRPGDiffGuidancePerceptual", guidance=g, vgg="tiny_vgg16.safetensors", target_image=image)[0]
        g = run(env, "BFRPGDiffGuidanceGAN", guidance=g, discriminator="tiny_vspbfr_discriminator.safetensors")[0]
        return run(env, "BFRPartialGuidanceSampler", prior=prior, image=image, guidance=g, steps=STEPS, seed=2)[0]

    expected = graph()
    nodes._cache.clear()  # the loaders build again, now under inference mode
    with torch.inference_mode():
        got = graph()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert nodes._cache["arcface"][1] is not env["arcface"]
    nodes._cache.clear()

"""Node contract: every node's schema, the pack's import, the Degrade node, and the example workflows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests import comfy_harness as harness
from tests import workflow_tools as wt

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
EXAMPLE_DATA = REPO / "bfr_core" / "data"  # example photos shipped with the package
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return harness.load_pack(tmp_path_factory.mktemp("comfy_base"))


def test_pack_registers_nodes(pack):
    assert "BFRDegrade" in pack
    assert all(node_id.startswith("BFR") for node_id in pack), "node ids must carry our prefix to avoid clashes"


def test_every_node_schema(pack):
    for node_id, cls in pack.items():
        schema = cls.define_schema()
        schema.validate()
        assert schema.display_name and schema.category.startswith("BFR"), node_id
        assert schema.description, f"{node_id} has no description"
        for inp in schema.inputs or []:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
            kind = inp.Parent.io_type
            default = getattr(inp, "default", None)
            if kind in ("INT", "FLOAT") and default is not None:
                assert inp.min is None or inp.min <= default, f"{node_id}.{inp.id} default below min"
                assert inp.max is None or default <= inp.max, f"{node_id}.{inp.id} default above max"
            if kind == "COMBO":
                assert inp.options, f"{node_id}.{inp.id} has no options"
                assert default is None or default in inp.options, f"{node_id}.{inp.id} default not an option"
            if inp.id == "seed":
                assert inp.control_after_generate, f"{node_id}.seed should offer control_after_generate"
        assert schema.outputs, f"{node_id} has no outputs"
        assert isinstance(cls.__dict__["execute"], classmethod), f"{node_id}.execute must be a classmethod"


def test_import_is_cheap_and_side_effect_free(tmp_path):
    """Importing the pack and listing nodes downloads nothing, loads no model, writes no cache."""
    code = textwrap.dedent(f"""
        import sys, time, os
        sys.path.insert(0, {str(REPO)!r})
        from tests import comfy_harness as h
        t = time.perf_counter()
        nodes = h.load_pack(__import__('pathlib').Path({str(tmp_path / 'base')!r}))
        dt = time.perf_counter() - t
        heavy = sorted(m for m in sys.modules if m.startswith(("bfr_core.models", "bfr_core.pipelines", "facexlib", "lpips", "huggingface_hub", "accelerate")))
        print(len(nodes), round(dt, 3), ",".join(heavy))
    """)
    env = {"BFR_HOME": str(tmp_path / "bfr"), "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    n, seconds, heavy = out.stdout.split(" ", 2)
    assert int(n) > 0
    assert heavy.strip() == "", f"listing nodes imported heavy modules: {heavy}"
    assert not (tmp_path / "bfr").exists() and not (tmp_path / "hf").exists(), "importing wrote a cache"


def _face(h=96, w=80, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, h, w, c, generator=g)


def test_degrade_node_batches_seeds_and_keeps_alpha(pack):
    node = pack["BFRDegrade"]
    rgba = torch.cat([_face(c=4, seed=i) for i in range(3)])
    out, text = harness.run(node, image=rgba, preset="gfpgan", seed=5, overrides="scale=4, jpeg_quality=60").args
    assert out.shape == rgba.shape and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out[..., 3], rgba[..., 3]), "alpha must pass through unchanged"
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["seed"] for r in rows] == [5, 6, 7] and all(r["scale"] == 4 and r["jpeg_quality"] == 60 for r in rows)
    again, _ = harness.run(node, image=rgba[1:2], preset="gfpgan", seed=6, overrides="scale=4, jpeg_quality=60").args
    assert torch.equal(again, out[1:2]), "image i uses seed + i, independent of the batch"
    gray = _face(c=1)
    g_out, _ = harness.run(node, image=gray, preset="gpen", seed=0).args
    assert g_out.shape == (1, 96, 80, 3)
    assert (out[..., :3] - rgba[..., :3]).abs().mean() > 0.01, "the image was not degraded"


def test_degrade_node_clear_errors(pack):
    from bfr_core.errors import InputError

    node = pack["BFRDegrade"]
    with pytest.raises(InputError, match="scale"):
        harness.run(node, image=_face(), overrides="scale=banana")
    with pytest.raises(InputError, match="NaN"):
        harness.run(node, image=torch.full((1, 8, 8, 3), float("nan")))
    with pytest.raises(ValueError, match="not one of"):
        harness.run(node, image=_face(), preset="nope")


def test_degrade_node_reports_progress_and_can_be_interrupted(pack, monkeypatch):
    import comfy.model_management as mm
    import comfy.utils

    node = pack["BFRDegrade"]
    monkeypatch.setattr("comfyui_bfr_under_test.nodes.degrade.CHUNK", 2)
    comfy.utils.UPDATES.clear()
    harness.run(node, image=torch.rand(5, 16, 16, 3), overrides="scale=2")
    assert [u[1:3] for u in comfy.utils.UPDATES] == [(2, 5), (4, 5), (5, 5)]
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        harness.run(node, image=torch.rand(5, 16, 16, 3))
    assert not mm.processing_interrupted()


def _needs_detector(workflow: Path) -> bool:
    return '"BFRFaceDetectorLoader"' in workflow.read_text()


def _stub_executor(pack, input_dir: Path, saved: list):
    def execute(class_type: str, args: dict) -> tuple:
        if class_type == "LoadImage":
            from bfr_core.imageio import load_image

            return load_image(input_dir / args["image"]), torch.zeros(1, 64, 64)
        if class_type in ("SaveImage", "PreviewImage"):
            saved.append(args["images"])
            return ()
        return harness.run(pack[class_type], **args).args
    return execute


@pytest.fixture(scope="module")
def tiny_models(pack):
    """Tiny random-weight checkpoints in the stand-in's models/bfr folder, and the workflow substitutions."""
    import folder_paths

    from tests import tiny_weights

    return tiny_weights.write_all(Path(folder_paths.models_dir) / "bfr")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflows_run(pack, tiny_models, path, tmp_path):
    from tests import tiny_weights

    workflow = wt.load_workflow(path)
    info = wt.object_info_from_nodes(pack)
    prompt = tiny_weights.substitute(wt.ui_to_api(workflow, info), tiny_models)
    if _needs_detector(path) and not tiny_weights.detector_available():
        pytest.skip(f"{path.name} needs the YuNet detector weights at {tiny_weights.DETECTOR_FILE} (not here)")
    for node in prompt.values():  # every image a workflow loads is made here, or is the example photo we ship
        if node["class_type"] == "LoadImage":
            from bfr_core.imageio import save_image

            shipped = EXAMPLE_DATA / node["inputs"]["image"]
            if shipped.is_file():
                shutil.copy(shipped, tmp_path / shipped.name)
            else:
                save_image(_face(128, 128, seed=1), tmp_path / node["inputs"]["image"], overwrite=True)
    saved: list = []
    wt.run_prompt(prompt, _stub_executor(pack, tmp_path, saved))
    assert saved, f"{path.name} produced no image"
    for img in saved:
        assert img.dim() == 4 and img.shape[-1] in (3, 4) and torch.isfinite(img).all()


def test_workflow_files_match_their_specs(pack):
    from tests import workflow_specs

    rendered = workflow_specs.render_all(wt.object_info_from_nodes(pack))
    assert sorted(rendered) == [p.stem for p in WORKFLOWS], "a workflow file has no spec (or the reverse)"
    for name, text in rendered.items():
        assert (REPO / "workflows" / f"{name}.json").read_text() == text, f"regenerate: python -m tests.workflow_specs ({name})"


def test_ui_to_api_maps_widgets_by_position(pack):
    prompt = wt.ui_to_api(wt.load_workflow(REPO / "workflows" / "degrade.json"), wt.object_info_from_nodes(pack))
    deg = next(n for n in prompt.values() if n["class_type"] == "BFRDegrade")
    assert deg["inputs"] == {"image": ["1", 0], "preset": "gfpgan", "seed": 42, "overrides": "scale=8, jpeg_quality=70", "jpeg": "pillow"}


@pytest.mark.comfyui
def test_in_real_comfyui(tmp_path):
    """The whole pack in a real ComfyUI (set COMFYUI_DIR, and COMFYUI_PYTHON for its environment)."""
    import os

    if not os.environ.get("COMFYUI_DIR"):
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the pack inside the real host")
    from tests import comfyui_e2e

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    from bfr_core.imageio import save_image

    save_image(_face(128, 128, seed=1), inputs / "bfr_example_face.png")
    for photo in EXAMPLE_DATA.glob("*.jpg"):
        shutil.copy(photo, inputs / photo.name)
    from tests import tiny_weights

    subs = tiny_weights.write_all(tmp_path / "models")
    (tmp_path / "subs.json").write_text(json.dumps(subs))
    workflows = []
    if not tiny_weights.detector_available():  # the face workflows need real detector weights
        print(f"note: face workflows left out: no detector weights at {tiny_weights.DETECTOR_FILE}")
        for wf in WORKFLOWS:
            workflows += [] if _needs_detector(wf) else ["--workflow", str(wf)]
    assert comfyui_e2e.main(["--inputs-from", str(inputs), "--models-from", str(tmp_path / "models"),
                             "--substitute", str(tmp_path / "subs.json"), *workflows]) == 0


def test_a_missing_optional_package_disables_only_its_family(tmp_path, monkeypatch, caplog):
    import importlib

    harness.load_pack(tmp_path)  # the pack is imported once; its node list is rebuilt below
    nodes_pkg = importlib.import_module(f"{harness.PACK_NAME}.nodes")
    real_import = importlib.import_module

    def fake_import(name, package=None):
        if name.endswith(".faces"):
            raise ModuleNotFoundError("No module named 'facexlib'", name="facexlib")
        return real_import(name, package)

    monkeypatch.setattr(nodes_pkg.importlib, "import_module", fake_import)
    with caplog.at_level("WARNING", logger="bfr"):
        listed = {cls.define_schema().node_id for cls in nodes_pkg.node_list()}
    assert "BFRDegrade" in listed and "BFRVSPBFRRestore" in listed
    assert not any(n.startswith("BFRFace") for n in listed)
    assert "faces nodes disabled" in caplog.text and "facexlib" in caplog.text

    def broken(name, package=None):
        if name.endswith(".degrade"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, package)

    monkeypatch.setattr(nodes_pkg.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError):  # our own module missing is a bug, never silently skipped
        nodes_pkg.node_list()

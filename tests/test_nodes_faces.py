"""Face nodes on a real group photo with the real YuNet detector (../shared/data; skipped when absent):
detect → restore (tiny VSPBFR or an identity restorer) → paste, the one-node Restore Faces, frames without
faces, RGBA / gray / empty / tiny inputs, selection options, face parsing, and the auto-download into
models/facedetection (from a loopback stand-in of the Hub)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from bfr_core.errors import InputError
from tests import comfy_harness as harness
from tests import tiny_weights

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GROUP = DATA / "lq" / "whole" / "insightface_group_t1.jpg"  # six faces
ONE_MB = DATA / "weights" / "detection_mobilenet0.25_Final.pth"

pytestmark = pytest.mark.data


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not here (real test data lives in ../shared/data beside the repository)")
    return path


class IdentityRestorer:
    """The smallest FaceRestorer: returns the crops unchanged (so a paste must reproduce the photo)."""

    name = "identity"
    size = 128

    def __init__(self) -> None:
        self.calls: list[int] = []

    def restore_faces(self, faces, seed=0, *, batch_size=None, on_progress=None, check_cancel=None):
        self.calls.append(faces.shape[0])
        if on_progress is not None:
            on_progress(1, 1, None)
        return faces.clone()

    def modules(self):
        return []


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The pack on the stand-in, YuNet in models/facedetection, tiny VSPBFR weights in models/bfr, the photo."""
    _need(tiny_weights.DETECTOR_FILE)
    from bfr_core.imageio import load_image

    photo = load_image(_need(GROUP))
    base = tmp_path_factory.mktemp("comfy_faces")
    with pytest.MonkeyPatch.context() as mp:  # module setup runs before the per-test cache isolation
        mp.setenv("BFR_HOME", str(base / "bfr_home"))
        pack = harness.load_pack(base)
        import folder_paths

        models = Path(folder_paths.models_dir)
        (models / "facedetection").mkdir(parents=True)
        shutil.copy2(tiny_weights.DETECTOR_FILE, models / "facedetection")
        subs = tiny_weights.write_vspbfr(models / "bfr")
        detector = harness.run(pack["BFRFaceDetectorLoader"], detector="yunet (auto-download)", working_size=320).args[0]
        vspbfr = harness.run(pack["BFRVSPBFRLoader"], style_encoder=subs["vspbfr-style-encoder (auto-download)"],
                             code_diffuser=subs["vspbfr-code-diffuser (auto-download)"],
                             restorer=subs["vspbfr-restoration-net (auto-download)"], precision="fp32").args[0]
    return {"pack": pack, "photo": photo, "detector": detector, "vspbfr": vspbfr, "models": models}


def detect(env, image=None, **kw):
    return harness.run(env["pack"]["BFRFaceDetectCrop"], detector=env["detector"],
                       image=env["photo"] if image is None else image, **kw).args


def paste(env, image, restored, faces, **kw):
    return harness.run(env["pack"]["BFRFacePasteBack"], image=image, restored=restored, faces=faces, **kw).args


def restore(env, restorer, image=None, **kw):
    return harness.run(env["pack"]["BFRRestoreFaces"], restorer=restorer, detector=env["detector"],
                       image=env["photo"] if image is None else image, **kw).args


def test_detect_restore_paste_equals_one_node(env):
    pack, photo, vspbfr = env["pack"], env["photo"], env["vspbfr"]
    crops, faces, masks = detect(env)
    assert crops.shape == (6, 512, 512, 3) and masks.shape == (6, 512, 512) and len(faces) == 6
    assert faces.frame.tolist() == [0] * 6 and faces.crop_size == 512
    assert float(masks[:, 256, 256].min()) == 1.0 and float(masks[:, 0, 0].max()) == 0.0
    areas = (faces.sizes ** 2).tolist()
    assert areas == sorted(areas, reverse=True), "default order: largest face first"

    # the graph of the workflow, with crops cut at the (tiny) restorer's size so both paths resample alike
    small, faces_s, _ = detect(env, crop_size=vspbfr.size)
    restored = harness.run(pack["BFRVSPBFRRestore"], vspbfr=vspbfr, image=small, seed=3, batch_size=4).args[0]
    out, mask = paste(env, photo, restored, faces_s)
    assert out.shape == photo.shape and mask.shape == photo.shape[:3]
    assert torch.equal(out[mask == 0], photo[mask == 0]), "outside the faces the photo is untouched"
    assert (out - photo).abs()[mask > 0.99].mean() > 0.02, "the faces were replaced"
    assert int((mask > 0.99).sum()) > 6 * 40 * 40

    one, one_mask, one_faces = restore(env, vspbfr, seed=3, batch_size=4)
    assert one_faces.shape == (6, vspbfr.size, vspbfr.size, 3)
    torch.testing.assert_close(one_faces, restored, atol=1e-5, rtol=0)
    torch.testing.assert_close(one, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_mask, mask)


def test_identity_restorer_reproduces_the_photo_and_keeps_alpha(env):
    photo = env["photo"]
    ident = IdentityRestorer()
    out, mask, faces = restore(env, ident, seed=0)
    assert faces.shape == (6, 128, 128, 3) and ident.calls == [6]
    inside = mask > 0.99
    err = (out - photo)[inside]
    assert float(10 * torch.log10(1 / (err ** 2).mean())) > 30  # 128² crops of ~100 px faces, resampled twice

    rgba = torch.cat([photo, torch.linspace(0, 1, photo.shape[2]).expand(*photo.shape[:3])[..., None]], -1)
    out4, mask4, _ = restore(env, ident, image=rgba, color_match="mean_std", upscale=2.0)
    assert out4.shape == (1, photo.shape[1] * 2, photo.shape[2] * 2, 4) and mask4.shape == out4.shape[:3]
    from bfr_core.images import merge_alpha

    assert torch.allclose(out4[..., 3], merge_alpha(out4[..., :3], rgba[..., 3])[..., 3]), "alpha is kept (resized)"


def test_frame_without_faces_passes_through_or_errors(env, caplog):
    photo = env["photo"]
    batch = torch.cat([photo, torch.full_like(photo, 0.5)])
    with caplog.at_level(logging.WARNING, logger="bfr"):
        crops, faces, _ = detect(env, image=batch)
    assert len(faces) == 6 and faces.frame.tolist() == [0] * 6
    assert any("1 of 2 frame(s): 1" in r.message and "pass through" in r.message for r in caplog.records)
    out, mask = paste(env, batch, crops, faces)
    assert torch.equal(out[1], batch[1]) and float(mask[1].max()) == 0.0
    with pytest.raises(InputError, match="if_no_face = error"):
        detect(env, image=batch, if_no_face="error")
    ident = IdentityRestorer()
    out, _, _ = restore(env, ident, image=batch[1:])  # no face at all: the restorer is not even called
    assert torch.equal(out, batch[1:]) and ident.calls == []
    with pytest.raises(InputError, match="no face found"):
        restore(env, ident, image=batch[1:], if_no_face="error")


def test_gray_empty_tiny_and_malformed_images(env):
    photo = env["photo"]
    gray = photo.mean(-1, keepdim=True)
    crops, faces, _ = detect(env, image=gray)
    assert len(faces) == 6 and crops.shape[-1] == 3
    out, _ = paste(env, gray, crops, faces)
    assert out.shape == (*gray.shape[:3], 3)  # gray in, colour out (restorers give colour faces)

    empty = torch.zeros(0, 64, 48, 3)
    crops, faces, masks = detect(env, image=empty)
    assert crops.shape == (0, 512, 512, 3) and masks.shape == (0, 512, 512) and len(faces) == 0
    out, mask = paste(env, empty, crops, faces)
    assert out.shape == (0, 64, 48, 3) and mask.shape == (0, 64, 48)
    out, _, restored = restore(env, IdentityRestorer(), image=empty)
    assert out.shape == (0, 64, 48, 3) and restored.shape == (0, 128, 128, 3)

    tiny = torch.rand(1, 6, 5, 3)
    crops, faces, _ = detect(env, image=tiny)
    assert len(faces) == 0 and paste(env, tiny, crops, faces)[0].equal(tiny)
    with pytest.raises(InputError, match="channels"):
        detect(env, image=photo.permute(0, 3, 1, 2))  # (B, C, H, W) by mistake
    with pytest.raises(InputError, match="restored crop"):
        crops, faces, _ = detect(env)
        paste(env, photo, crops[:2], faces)
    with pytest.raises(InputError, match="Face Detect & Crop"):
        paste(env, photo, crops, "not faces")
    with pytest.raises(InputError, match="not a face restorer"):
        restore(env, "not a restorer")


def test_selection_options_reach_the_detector(env):
    _, all_faces, _ = detect(env, sort_by="x")
    xs = ((all_faces.boxes[:, 0] + all_faces.boxes[:, 2]) / 2).tolist()
    assert xs == sorted(xs)
    _, largest, _ = detect(env, select="largest")
    assert len(largest) == 1 and float(largest.sizes[0]) == float(all_faces.sizes.max())
    _, ends, _ = detect(env, select="index", index="0,-1", sort_by="x")
    torch.testing.assert_close(ends.boxes, all_faces.boxes[[0, 5]])
    _, rev, _ = detect(env, sort_by="x", reverse=True, start=1, max_faces=2)
    torch.testing.assert_close(rev.boxes, all_faces.boxes[[4, 3]])
    median = int(all_faces.sizes.median())
    _, big, _ = detect(env, min_size=median)
    assert len(big) == int((all_faces.sizes >= median).sum()) and 0 < len(big) < 6
    thr = float(all_faces.scores.sort().values[2])
    _, strict, _ = detect(env, score_threshold=thr)
    assert len(strict) == int((all_faces.scores > thr).sum()) == 3
    with pytest.raises(InputError, match="comma-separated"):
        detect(env, select="index", index="first")


def test_parser_and_crop_masks_shape_the_paste(env):
    pytest.importorskip("facexlib")
    from bfr_core.faces.parsing import build_parser

    placed_cls = type(env["detector"])  # PlacedNet of the pack under test
    torch.manual_seed(0)
    parser = placed_cls(build_parser("bisenet"), on_cpu=True)
    photo = env["photo"]
    crops, faces, masks = detect(env, crop_size=128, max_faces=2)
    plain, plain_mask = paste(env, photo, crops, faces)
    parsed, parsed_mask = paste(env, photo, crops, faces, parser=parser)
    assert parsed.shape == photo.shape and torch.isfinite(parsed).all()
    assert bool((parsed_mask <= plain_mask + 1e-5).all()) and float((plain_mask - parsed_mask).abs().max()) > 0.05
    half = masks * (torch.arange(128) < 64).float()[None, :, None]  # keep only the upper half of each crop
    _, cut_mask = paste(env, photo, crops, faces, crop_masks=half)
    assert float(cut_mask.sum()) < 0.8 * float(plain_mask.sum())


def test_restorer_input_accepts_every_restorer_type(env):
    schema = env["pack"]["BFRRestoreFaces"].define_schema()
    restorer = next(i for i in schema.inputs if i.id == "restorer")
    assert set(restorer.get_io_type().split(",")) >= {"BFR_VSPBFR", "BFR_PLTRANS"}


def test_progress_reaches_the_end_and_interrupt_stops(env):
    import comfy.model_management as mm
    import comfy.utils

    comfy.utils.UPDATES.clear()
    restore(env, IdentityRestorer())
    assert comfy.utils.UPDATES and comfy.utils.UPDATES[-1][1:3] == (1000, 1000)
    done = [u[1] for u in comfy.utils.UPDATES]
    assert done == sorted(done), "the bar never goes back"
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        detect(env)
    assert not mm.processing_interrupted()


def test_detector_loader_files_kinds_and_errors(env, tmp_path, monkeypatch):
    from bfr_core.errors import DownloadError, WeightsError

    node = env["pack"]["BFRFaceDetectorLoader"]
    options = node.define_schema().inputs[0].options
    assert options[:3] == ["retinaface-resnet50 (auto-download)", "retinaface-mobilenet0.25 (auto-download)", "yunet (auto-download)"]
    assert "yunet_final.pth" not in options  # covered by its auto-download entry
    bogus = env["models"] / "facedetection" / "not_a_detector.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bogus)
    assert "not_a_detector.pth" in node.define_schema().inputs[0].options
    with pytest.raises(WeightsError, match="not a RetinaFace"):
        harness.run(node, detector="not_a_detector.pth")
    with pytest.raises(WeightsError, match="not retinaface_resnet50"):
        harness.run(node, detector="yunet (auto-download)", kind="retinaface_resnet50")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="place it in a model folder"):
        harness.run(node, detector="retinaface-resnet50 (auto-download)")
    if ONE_MB.is_file() and __import__("importlib").util.find_spec("facexlib"):
        # the Face-Detector-1MB file under another name: recognised by content, gets its own anchors
        shutil.copy2(ONE_MB, env["models"] / "facedetection" / "retinaface_1mb.pth")
        det = harness.run(node, detector="retinaface_1mb.pth", working_size=640, device="cpu").args[0]
        assert det.net.kind == "retinaface_mobile0.25_1mb"
        _, faces, _ = harness.run(env["pack"]["BFRFaceDetectCrop"], detector=det, image=env["photo"]).args
        assert len(faces) == 6


def test_auto_download_goes_to_models_facedetection(env, monkeypatch):
    """No file anywhere: 'yunet (auto-download)' fetches it (here from a loopback Hub) into models/facedetection."""
    from tests import hub_server

    fresh = env["models"].parent / "fresh_base"
    hub = hub_server.FakeHub()
    hub.add("kornia/yunet", "yunet_final.pth", tiny_weights.DETECTOR_FILE.read_bytes())
    server = hub_server.start(hub)
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        from bfr_core.weights import fetch

        monkeypatch.setattr(fetch, "_search_dirs", [])  # forget the other tests' model folders
        pack = harness.load_pack(fresh)
        det = harness.run(pack["BFRFaceDetectorLoader"], detector="yunet (auto-download)").args[0]
    finally:
        server.shutdown()
        harness.load_pack(env["models"].parent)  # back to this module's folders
    target = fresh / "models" / "facedetection"
    assert (target / "yunet_final.pth").read_bytes() == tiny_weights.DETECTOR_FILE.read_bytes()
    assert any("kornia/yunet/resolve" in p for _, p in hub.requests)
    assert det.net.kind == "yunet"


def test_bench_faces_entry_point():
    """What `bfr bench` calls: a flat dict of timings (tiny frames here; the README numbers use 1080p)."""
    from bfr_core.faces.bench import bench_faces

    r = bench_faces(height=96, width=160, face_size=40, repeats=1, warmup=0)
    assert r["frame"] == "160x96" and r["detector"] == "yunet" and r["detector_weights"] == "random"
    for key in ("paste_ms_per_face", "paste_ms_per_face_color", "paste_ms_per_frame_4_faces", "paste_ms_no_faces",
                "detect_ms_per_frame"):
        assert isinstance(r[key], float) and r[key] >= 0, key
    assert r["detect_ms_per_frame"] > 0 and r["paste_ms_per_frame_4_faces"] > 0

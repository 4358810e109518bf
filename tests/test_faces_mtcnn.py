"""The built-in MTCNN detector: packaged weights, the cascade, and agreement with facenet-pytorch and YuNet."""

from __future__ import annotations

import fnmatch
import os
import sys
import tomllib
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from bfr_core.faces import build_detector, detect_faces, load_builtin_detector, load_detector
from bfr_core.faces.detect import detector_kind_from_state_dict
from bfr_core.faces.mtcnn import _nms_min, pyramid_scales
from bfr_core.weights import KNOWN, inspect_checkpoint, load_checkpoint, load_model, resolve, sha256_file

from .conftest import REPO, SHARED_DATA

PACKAGED = REPO / "bfr_core" / "data" / "mtcnn_facenet_pytorch.safetensors"
WHOLE = SHARED_DATA / "lq" / "whole"
# facenet-pytorch's wheel (MIT) is not part of the repository; point FACENET_PYTORCH_WHEEL at it to compare.
WHEEL = Path(os.environ.get("FACENET_PYTORCH_WHEEL", "/tmp/pipprobe/facenet_pytorch-2.6.0-py3-none-any.whl"))

_DETECTOR: dict = {}
_GROUP: dict = {}


def mtcnn():
    if "det" not in _DETECTOR:
        _DETECTOR["det"] = load_builtin_detector()
    return _DETECTOR["det"]


def group_faces():
    """MTCNN on the group photo at the default working size (computed once)."""
    if "faces" not in _GROUP:
        _GROUP["image"] = load_image(WHOLE / "insightface_group_t1.jpg")
        _GROUP["faces"] = detect_faces(_GROUP["image"], mtcnn())
    return _GROUP["image"], _GROUP["faces"]


def load_image(path: Path, mode: str = "RGB") -> torch.Tensor:
    if not path.exists():
        pytest.skip(f"{path} is not here (real test data lives in ../shared/data beside the repository)")
    arr = np.array(Image.open(path).convert(mode), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None] if arr.ndim == 3 else torch.from_numpy(arr)[None, ..., None]


# ------------------------------------------------------------------------------------------ packaged weights

def test_packaged_weights_load_strictly_and_are_registered(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, entry = resolve("mtcnn", allow_download=False)
    assert path == PACKAGED and entry is KNOWN["mtcnn"] and sha256_file(path) == entry.sha256
    loaded = load_model("mtcnn")
    assert loaded.architecture == "mtcnn" and loaded.report.ok
    info = inspect_checkpoint(PACKAGED)
    assert info["registry_id"] == "mtcnn" and info["dtypes"] == ["float32"]
    assert [a["architecture"] for a in info["architectures"]] == ["mtcnn"]
    sd = load_checkpoint(PACKAGED).tensors
    assert {k.split(".")[0] for k in sd} == {"pnet", "rnet", "onet"}
    assert detector_kind_from_state_dict(sd) == "mtcnn"
    det = load_detector(PACKAGED)
    assert det.kind == "mtcnn" and det.net.config.min_face_size == 20
    for name, module in det.net.named_children():  # every tensor of the file is used, none is missing
        own = module.state_dict()
        assert own.keys() == {k[len(name) + 1:] for k in sd if k.startswith(name + ".")}


def test_package_data_ships_the_weights():
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bfr_core"]
    assert any(fnmatch.fnmatch("data/mtcnn_facenet_pytorch.safetensors", g) for g in globs)
    assert "mtcnn_facenet_pytorch.safetensors" in (REPO / "bfr_core" / "data" / "README.md").read_text()


# ------------------------------------------------------------------------------------------ the cascade

def test_pyramid_covers_min_face_to_whole_image():
    scales = pyramid_scales(360, 640, 20.0, 0.709)
    assert scales[0] == pytest.approx(0.6) and 360 * scales[-1] >= 12 > 360 * scales[-1] * 0.709
    assert pyramid_scales(16, 16, 20.0, 0.709) == []  # smaller than the smallest face: nothing to search


def test_min_nms_removes_nested_boxes_per_frame():
    boxes = torch.tensor([[0, 0, 100, 100], [10, 10, 40, 40], [200, 0, 300, 100], [10, 10, 40, 40.0]])
    scores = torch.tensor([0.9, 0.95, 0.8, 0.99])
    frame = torch.tensor([0, 0, 0, 1])
    keep = _nms_min(boxes, scores, frame, 0.7)
    # the small box (higher score) inside the big one suppresses it; the same box in another frame stays
    assert keep.tolist() == [3, 1, 2]


def test_random_weights_run_the_whole_cascade_batched():
    det = build_detector("mtcnn")
    det.net.config.pnet_threshold = det.net.config.rnet_threshold = 0.0  # let every proposal through
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 40, 52, 3, generator=g)
    boxes, pts, score = det(images.permute(0, 3, 1, 2))
    k = score.shape[1]
    assert k > 0 and boxes.shape == (2, k, 4) and pts.shape == (2, k, 5, 2)
    assert ((score > 0).sum(0) == 1).all()  # each detection belongs to exactly one frame
    faces = detect_faces(images, det, score_threshold=0.0)
    assert len(faces) > 0 and faces.landmarks.shape[1:] == (5, 2)


def test_finds_the_packaged_portrait():
    """grace_hopper.jpg ships with the package, so this runs everywhere."""
    img = load_image(REPO / "bfr_core" / "data" / "grace_hopper.jpg")
    faces = detect_faces(img, mtcnn())
    assert len(faces) == 1 and float(faces.scores[0]) > 0.99
    (le, re, nose, lm, rm) = faces.landmarks[0]
    assert le[0] < re[0] and lm[0] < rm[0]  # left / right as seen in the image, as the alignment template
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1])
    x1, y1, x2, y2 = faces.boxes[0]
    assert ((faces.landmarks[0, :, 0] > x1) & (faces.landmarks[0, :, 0] < x2)).all()


def test_no_face_images_give_no_faces():
    g = torch.Generator().manual_seed(1)
    images = torch.cat([torch.zeros(1, 240, 320, 3), torch.ones(1, 240, 320, 3), torch.rand(1, 240, 320, 3, generator=g)])
    faces = detect_faces(images, mtcnn())
    assert len(faces) == 0 and faces.frames_without_faces() == [0, 1, 2]
    assert len(detect_faces(torch.rand(1, 8, 8, 3), mtcnn())) == 0  # below the smallest face


def test_batch_gives_the_same_faces_as_single_frames():
    portrait = load_image(REPO / "bfr_core" / "data" / "grace_hopper.jpg")
    flipped = portrait.flip(2)
    both = detect_faces(torch.cat([portrait, torch.zeros_like(portrait), flipped]), mtcnn(), max_side=320)
    assert both.frame.tolist() == [0, 2]
    for i, single in ((0, portrait), (1, flipped)):
        one = detect_faces(single, mtcnn(), max_side=320)
        torch.testing.assert_close(both.boxes[i:i + 1], one.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(both.landmarks[i:i + 1], one.landmarks, atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------------ real photos

@pytest.mark.data
def test_group_photo_six_faces_and_landmarks_agree_with_yunet():
    img, faces = group_faces()  # default working size: longest side 640
    assert len(faces) == 6, faces.scores
    yunet_file = SHARED_DATA / "weights" / "yunet_final.pth"
    if not yunet_file.exists():
        pytest.skip(f"{yunet_file} is not here")
    ref = detect_faces(img, load_detector(yunet_file))
    iou, j = box_iou(faces.boxes, ref.boxes).max(1)
    assert (iou > 0.75).all() and len(set(j.tolist())) == 6, iou
    size = (ref.boxes[j, 2:] - ref.boxes[j, :2]).mean(1)
    err = (faces.landmarks - ref.landmarks[j]).norm(dim=-1).mean(1) / size  # mean landmark distance / face size
    assert float(err.max()) < 0.08 and float(err.mean()) < 0.06, err


@pytest.mark.data
def test_grayscale_and_rgba_work_like_rgb():
    _, rgb = group_faces()
    gray = detect_faces(load_image(WHOLE / "insightface_group_t1.jpg", "L"), mtcnn())
    assert len(gray) == 6 and (box_iou(gray.boxes, rgb.boxes).amax(1) > 0.8).all()
    rgba = load_image(WHOLE / "cf_02.png", "RGBA")
    with_alpha, without = detect_faces(rgba, mtcnn(), max_side=320), detect_faces(rgba[..., :3], mtcnn(), max_side=320)
    assert len(with_alpha) >= 1 and torch.equal(with_alpha.boxes, without.boxes)


@pytest.fixture
def facenet_pytorch(tmp_path, monkeypatch):
    """facenet-pytorch's own MTCNN, imported from its unzipped wheel (only torch, torchvision, PIL, numpy needed)."""
    if not WHEEL.is_file():
        pytest.skip(f"facenet-pytorch's wheel is not at {WHEEL} (set FACENET_PYTORCH_WHEEL); it is not part of the repository")
    with zipfile.ZipFile(WHEEL) as z:
        z.extractall(tmp_path, [n for n in z.namelist() if n.startswith("facenet_pytorch/")])
    # its package __init__ imports requests for the face-recognition model: load only the detector modules
    pkg = types.ModuleType("facenet_pytorch")
    pkg.__path__ = [str(tmp_path / "facenet_pytorch")]
    monkeypatch.setitem(sys.modules, "facenet_pytorch", pkg)
    from facenet_pytorch.models.mtcnn import MTCNN

    yield MTCNN
    for name in [n for n in sys.modules if n.startswith("facenet_pytorch.")]:
        del sys.modules[name]


def test_same_networks_and_detections_as_facenet_pytorch(facenet_pytorch):
    ref = facenet_pytorch(keep_all=True, device="cpu")
    ours = mtcnn().net
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        x = torch.randn(5, 3, 40, 52, generator=g)
        (reg, prob), (p, r) = ref.pnet(x), ours.pnet(x)
        torch.testing.assert_close(p, prob[:, 1])
        torch.testing.assert_close(r, reg)
        x = torch.randn(5, 3, 24, 24, generator=g)
        (reg, prob), (p, r) = ref.rnet(x), ours.rnet(x)
        torch.testing.assert_close(p, prob[:, 1])
        torch.testing.assert_close(r, reg)
        x = torch.randn(5, 3, 48, 48, generator=g)
        (reg, lm, prob), (p, r, pts) = ref.onet(x), ours.onet(x)
        torch.testing.assert_close(p, prob[:, 1])
        torch.testing.assert_close(r, reg)
        torch.testing.assert_close(pts, torch.stack([lm[:, :5], lm[:, 5:]], -1))
    # whole cascade on the portrait, both at full resolution: the crops differ (sub-pixel roi_align with black
    # padding here, integer area crops clipped to the image there), so boxes agree to IoU > 0.85
    pil = Image.open(REPO / "bfr_core" / "data" / "grace_hopper.jpg").convert("RGB")
    boxes, probs, points = ref.detect(pil, landmarks=True)
    faces = detect_faces(torch.from_numpy(np.array(pil, dtype=np.float32) / 255)[None], mtcnn(), max_side=None, score_threshold=0.7)
    assert len(faces) == len(boxes) == 1
    rb = torch.from_numpy(np.stack(list(boxes)).astype(np.float32))
    assert float(box_iou(rb, faces.boxes)[0, 0]) > 0.85
    size = float((rb[0, 2:] - rb[0, :2]).mean())
    lm = torch.from_numpy(np.stack(list(points)).astype(np.float32))
    assert float((lm - faces.landmarks).norm(dim=-1).max()) < 0.04 * size
    assert abs(float(probs[0]) - float(faces.scores[0])) < 0.01


def test_detector_loader_node_offers_the_builtin_mtcnn_offline(tmp_path, monkeypatch):
    from tests import comfy_harness as harness

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pack = harness.load_pack(tmp_path)
    node = pack["BFRFaceDetectorLoader"]
    assert "mtcnn (built-in)" in node.define_schema().inputs[0].options
    det = harness.run(node, detector="mtcnn (built-in)", working_size=320, device="cpu").args[0]
    assert det.net.kind == "mtcnn"
    _, faces, _ = harness.run(pack["BFRFaceDetectCrop"], detector=det, image=load_image(REPO / "bfr_core" / "data" / "grace_hopper.jpg")).args
    assert len(faces) == 1

"""Faces on real photos from ../shared/data with the real detector weights (skipped when absent)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bfr_core.faces import crop_faces, detect_faces, load_detector, paste_faces, select_faces, template
from bfr_core.faces.align import affine_grid_pixels, apply_affine, compose_affine, invert_affine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WEIGHTS = {"retinaface_mobile0.25_1mb": "detection_mobilenet0.25_Final.pth", "yunet": "yunet_final.pth"}
GROUP = "insightface_group_t1.jpg"

pytestmark = pytest.mark.data


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not here (real test data lives in ../shared/data beside the repository)")
    return path


def load_image(path: Path, mode: str = "RGB") -> torch.Tensor:
    import numpy as np
    from PIL import Image

    arr = np.array(Image.open(need(path)).convert(mode), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None] if arr.ndim == 3 else torch.from_numpy(arr)[None, ..., None]


_DETECTORS: dict = {}


def detector(kind: str):
    if kind not in _DETECTORS:
        if kind.startswith("retinaface"):
            pytest.importorskip("facexlib")
        _DETECTORS[kind] = load_detector(need(DATA / "weights" / WEIGHTS[kind]))
    return _DETECTORS[kind]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou as iou

    return iou(a, b)


@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_detectors_find_the_six_faces_of_the_group_photo(kind):
    img = load_image(DATA / "lq" / "whole" / GROUP)
    det = detector(kind)
    assert det.kind == kind  # the 1MB RetinaFace file is recognised and gets its own anchors
    faces = detect_faces(img, det)  # default working size: longest side 640
    assert len(faces) == 6, faces.scores
    assert faces.frames_without_faces() == []
    # both backends agree on where the faces are
    other = detect_faces(img, detector("yunet" if kind != "yunet" else "retinaface_mobile0.25_1mb"))
    assert (box_iou(faces.boxes, other.boxes).amax(1) > 0.4).all()
    assert faces.sizes.min() > 60 and faces.sizes.max() < 250


@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_alignment_puts_landmarks_on_the_ffhq_template(kind):
    """Aligned FFHQ-style crops, shrunk and rotated into a canvas: detection + alignment must undo it."""
    files = sorted(need(DATA / "lq" / "cropped").iterdir())[::3]
    from PIL import Image
    import numpy as np

    crops = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((512, 512)), dtype=np.float32) / 255) for f in files])
    k, ang = 0.3, math.radians(15)
    place = torch.tensor([[k * math.cos(ang), -k * math.sin(ang), 150.0], [k * math.sin(ang), k * math.cos(ang), 60.0]])
    grid = affine_grid_pixels(invert_affine(place[None]).expand(len(files), 2, 3), 320, 480, 512, 512)
    canvas = torch.nn.functional.grid_sample(crops.permute(0, 3, 1, 2), grid, align_corners=True, padding_mode="border").permute(0, 2, 3, 1)
    faces = select_faces(detect_faces(canvas, detector(kind)), mode="largest")
    assert faces.frames_without_faces() == []
    # where the template lands after crop → canvas → our alignment, in canvas pixels
    round_trip = compose_affine(faces.affine, place[None].expand(len(faces), 2, 3))
    err = (apply_affine(round_trip, template(512)[None].expand(len(faces), 5, 2)) - template(512)).norm(dim=-1).mean(1) * k
    assert float(err.median()) < 4.5, err
    assert float(err.mean()) < 6.0, err


def test_unchanged_crops_paste_back_without_seams():
    img = load_image(DATA / "lq" / "whole" / GROUP)
    faces = detect_faces(img, detector("yunet"), max_side=320)
    crops = crop_faces(img, faces)
    assert crops.shape == (6, 512, 512, 3)
    res = paste_faces(img, crops, faces)
    inside, band, outside = res.mask > 0.99, (res.mask > 0.02) & (res.mask < 0.98), res.mask == 0
    err = (res.image - img).abs()
    assert torch.equal(res.image[outside], img[outside])
    assert float(10 * torch.log10(1 / (err[inside] ** 2).mean())) > 38
    assert err[inside].max() < 0.15

    def grad_energy(x: torch.Tensor) -> float:
        gy = (x[:, 1:, :-1] - x[:, :-1, :-1]) ** 2
        gx = (x[:, :-1, 1:] - x[:, :-1, :-1]) ** 2
        return float((gx + gy).sum(-1)[band[:, :-1, :-1]].mean())

    ratio = grad_energy(res.image) / grad_energy(img)
    assert 0.8 < ratio < 1.1, ratio  # no seam (would add energy), no visible blur band (would remove it)


def test_rgba_photo_keeps_alpha_and_small_photo_upscales():
    rgba = load_image(DATA / "lq" / "whole" / "cf_02.png", mode="RGBA")
    faces = detect_faces(rgba, detector("yunet"), max_side=320)
    assert len(faces) >= 1
    res = paste_faces(rgba, crop_faces(rgba, faces, crop_size=256), faces)
    assert res.image.shape == rgba.shape and torch.equal(res.image[..., 3], rgba[..., 3])
    small = load_image(DATA / "lq" / "whole" / "cf_01.jpg")
    faces = detect_faces(small, detector("yunet"))
    assert len(faces) >= 1
    up = paste_faces(small, crop_faces(small, faces, crop_size=256), faces, upscale=2)
    assert up.image.shape[1:3] == (small.shape[1] * 2, small.shape[2] * 2)
    big = torch.nn.functional.interpolate(small.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    inside = up.mask > 0.99
    assert float(10 * torch.log10(1 / ((up.image - big)[inside] ** 2).mean())) > 30

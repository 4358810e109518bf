"""Faces core without real data: alignment maths, the Faces record, selection, crop/paste, chunking."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from bfr_core.errors import InputError, WeightsError
from bfr_core.faces import (Faces, build_detector, crop_faces, crop_mask, detect_faces, fit_similarity, invert_affine,
                            match_color, paste_faces, run_chunked, select_faces, template)
from bfr_core.faces.align import apply_affine, compose_affine
from bfr_core.faces.bench import bench_paste, synthetic_faces
from bfr_core.faces.detect import detector_kind_from_state_dict


def smooth_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency colour image (B, H, W, 3): resampling it twice loses almost nothing."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, 3, max(2, h // 24), max(2, w // 24), generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-12)))


# --- alignment -----------------------------------------------------------------------------------

def test_fit_similarity_recovers_known_transform_batched():
    g = torch.Generator().manual_seed(1)
    n = 6
    ang = torch.rand(n, generator=g) * 2 * math.pi
    scale = 0.2 + torch.rand(n, generator=g) * 3
    t = torch.rand(n, 2, generator=g) * 500
    m = torch.stack([torch.stack([scale * ang.cos(), -scale * ang.sin(), t[:, 0]], -1),
                     torch.stack([scale * ang.sin(), scale * ang.cos(), t[:, 1]], -1)], -2)
    src = torch.rand(n, 5, 2, generator=g) * 300
    dst = apply_affine(m, src)
    fit = fit_similarity(src, dst)
    assert torch.allclose(fit, m, atol=1e-3, rtol=1e-4)
    eye = compose_affine(invert_affine(fit), fit)
    assert torch.allclose(eye, torch.eye(2, 3).expand(n, 2, 3), atol=1e-4)


def test_template_scales_with_crop_size_and_rejects_tiny():
    assert torch.allclose(template(1024), (template(512) + 0.5) * 2 - 0.5)
    assert float(template(256)[:, 0].mean()) == pytest.approx(float(template(512)[:, 0].mean()) / 2 - 0.25, abs=1e-4)
    with pytest.raises(InputError):
        template(8)


# --- Faces record ----------------------------------------------------------------------------------

def two_frame_faces() -> Faces:
    """Frame 0: three faces of sizes 40, 120, 80 at x = 300, 100, 200; frame 2: one face; frame 1: none."""
    boxes = torch.tensor([[280., 50, 320, 90], [40, 40, 160, 160], [160, 60, 240, 140], [10, 10, 70, 70]])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2] - boxes[:, 0]
    ref = template(512)
    pts = (ref - ref.mean(0))[None] * (size / 256)[:, None, None] + centre[:, None]
    aff = fit_similarity(pts, ref)
    return Faces(torch.tensor([0, 0, 0, 2]), boxes, pts, torch.tensor([0.95, 0.99, 0.6, 0.9]), aff, invert_affine(aff), 200, 400, 3)


def test_faces_indexing_concatenation_and_transport():
    f = two_frame_faces()
    assert len(f) == 4 and f.frames_without_faces() == [1]
    assert f.counts_per_frame().tolist() == [3, 0, 1]
    sub = f[torch.tensor([False, True, False, True])]
    assert sub.frame.tolist() == [0, 2] and sub.num_frames == 3
    assert len(f[1]) == 1 and len(f[1:3]) == 2
    video = Faces.cat([f, f])
    assert video.num_frames == 6 and video.frame.tolist() == [0, 0, 0, 2, 3, 3, 3, 5]
    merged = Faces.cat([f[[3]], f[[0, 1]]], stack_frames=False)
    assert merged.frame.tolist() == [0, 0, 2]
    tail = video.for_frames(3, 6)
    assert tail.frame.tolist() == [0, 0, 0, 2] and tail.num_frames == 3
    again = pickle.loads(pickle.dumps(f))
    assert torch.equal(again.affine, f.affine)
    assert torch.equal(Faces.from_dict(f.to_dict()).boxes, f.boxes)
    with pytest.raises(InputError):
        Faces.cat([f, Faces.empty(100, 100, 1)])
    with pytest.raises(InputError):
        f[[7]]


# --- selection -----------------------------------------------------------------------------------

def test_select_modes_and_orders():
    f = two_frame_faces()
    assert select_faces(f, mode="largest").boxes[:, 0].tolist() == [40.0, 10.0]
    by_x = select_faces(f, sort_by="x")
    assert by_x.boxes[:3, 0].tolist() == [40.0, 160.0, 280.0] and by_x.frame.tolist() == [0, 0, 0, 2]
    assert select_faces(f, sort_by="x", reverse=True).boxes[0, 0] == 280.0
    assert select_faces(f, sort_by="area").sizes[:3].tolist() == pytest.approx([120, 80, 40])
    assert select_faces(f, sort_by="y").boxes[0, 1] == 50.0  # box centres: y 70, 100, 100
    picked = select_faces(f, mode="index", index="0,-1", sort_by="x")
    assert picked.boxes[:, 0].tolist() == [40.0, 280.0, 10.0]  # frame 2 has one face: index 0 and -1 are the same face
    assert len(select_faces(f, min_size=70)) == 2
    assert select_faces(f, score_threshold=0.9).scores.tolist() == pytest.approx([0.95, 0.99, 0.9])
    assert select_faces(f, sort_by="area", start=1, max_faces=1).sizes.tolist() == pytest.approx([80.0])
    assert select_faces(f, max_faces=1).frame.tolist() == [0, 2]
    with pytest.raises(InputError):
        select_faces(f, mode="biggest")
    with pytest.raises(InputError):
        select_faces(f, mode="index", index="first")


# --- crop and paste --------------------------------------------------------------------------------

def test_crop_paste_roundtrip_and_passthrough():
    img = smooth_image(3, 200, 400)
    faces = two_frame_faces()
    crops = crop_faces(img, faces, crop_size=128)
    assert crops.shape == (4, 128, 128, 3)
    res = paste_faces(img, crops, faces)
    assert res.image.shape == img.shape and res.frames_without_faces == [1]
    assert torch.equal(res.image[1], img[1])  # no face: untouched, bit for bit
    inside, outside = res.mask > 0.99, res.mask == 0
    assert torch.equal(res.image[outside], img[outside])
    assert (res.image - img).abs()[inside].max() < 0.03
    assert psnr(res.image[inside], img[inside]) > 40


def test_paste_seams_are_feathered():
    """A brightened crop must blend in: no step at the mask border, unlike a hard paste."""
    img = smooth_image(1, 200, 400) * 0.7  # +0.2 never clips, so the difference is the blend weight alone
    faces = two_frame_faces()[[1]]
    faces.num_frames = 1
    crops = (crop_faces(img, faces, crop_size=256) + 0.2).clamp(0, 1)

    def max_step(feather: float) -> float:
        d = paste_faces(img, crops, faces, feather=feather, margin=0.02).image[0] - img[0]
        return float(torch.maximum((d[1:] - d[:-1]).abs().amax(), (d[:, 1:] - d[:, :-1]).abs().amax()))

    soft, hard = max_step(0.15), max_step(0.0)
    assert hard > 0.12  # the metric sees a seam when there is one
    assert soft < 0.2 * hard


def test_overlapping_faces_cross_fade_without_double_blending():
    img = smooth_image(1, 200, 300)
    ref = template(512)
    centres = torch.tensor([[120.0, 100.0], [175.0, 100.0]])  # crops overlap heavily
    pts = (ref - ref.mean(0))[None] * (70 / 256) + centres[:, None]
    aff = fit_similarity(pts, ref)
    faces = Faces(torch.zeros(2, dtype=torch.long), torch.cat([centres - 35, centres + 35], 1), pts, torch.ones(2), aff,
                  invert_affine(aff), 200, 300, 1)
    same = paste_faces(img, crop_faces(img, faces, crop_size=256), faces)
    inside = same.mask > 0.99
    assert psnr(same.image[inside], img[inside]) > 38  # overlap of two unchanged crops is still the original
    red = torch.zeros(2, 256, 256, 3)
    red[0, ..., 0] = 1.0
    red[1, ..., 2] = 1.0
    out = paste_faces(img, red, faces).image[0]
    a, b = out[100, 120], out[100, 175]
    assert a[0] > 0.9 and a[2] < 0.1 and b[2] > 0.9 and b[0] < 0.1  # each face keeps its own crop at its centre
    row = out[100, 120:176]
    assert (row[1:] - row[:-1]).abs().max() < 0.15  # cross-fade, not a cut


def test_color_match_removes_a_color_shift():
    from kornia.color import lab_to_rgb, rgb_to_lab

    img = smooth_image(1, 200, 400, seed=3) * 0.8 + 0.05
    faces = two_frame_faces()[[1]]
    faces.num_frames = 1
    crops = crop_faces(img, faces, crop_size=256)
    lab = rgb_to_lab(crops.permute(0, 3, 1, 2))
    lab_shift = lab_to_rgb(lab * torch.tensor([0.9, 1.1, 1.0]).view(1, 3, 1, 1) + torch.tensor([6.0, 5.0, -4.0]).view(1, 3, 1, 1))
    rgb_shift = (crops * torch.tensor([1.15, 1.0, 0.85]) + 0.06).clamp(0, 1)
    for shifted, mode, factor in ((lab_shift.permute(0, 2, 3, 1), "mean_std", 0.15), (rgb_shift, "mean", 0.5), (rgb_shift, "mean_std", 0.5)):
        plain = paste_faces(img, shifted, faces)
        inside = plain.mask > 0.99
        err_none = (plain.image - img).abs()[inside].mean()
        matched = paste_faces(img, shifted, faces, color_match=mode).image
        assert (matched - img).abs()[inside].mean() < factor * err_none, mode
    x = crops.permute(0, 3, 1, 2)
    assert torch.allclose(match_color(x, x, torch.ones(1, 1, 256, 256)), x, atol=2e-3)


def test_paste_upscale_background_visibility_alpha_gray():
    img = smooth_image(3, 200, 400)
    faces = two_frame_faces()
    crops = crop_faces(img, faces, crop_size=128)
    up = paste_faces(img, crops, faces, upscale=2.0)
    assert up.image.shape == (3, 400, 800, 3) and up.mask.shape == (3, 400, 800)
    big = torch.nn.functional.interpolate(img.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)
    inside = up.mask > 0.99
    assert psnr(up.image[inside], big[inside]) > 35
    given = paste_faces(img, crops, faces, upscale=2.0, background=big * 0.5)
    assert torch.equal(given.image[1], big[1] * 0.5)
    off = paste_faces(img, crops * 0, faces, visibility=0.0)
    assert torch.equal(off.image, img) and off.mask.max() == 0
    rgba = torch.cat([img, torch.rand(3, 200, 400, 1)], -1)
    out = paste_faces(rgba, crops, faces)
    assert out.image.shape[-1] == 4 and torch.equal(out.image[..., 3], rgba[..., 3])
    gray = img[..., :1]
    out = paste_faces(gray, crop_faces(gray, faces), faces)
    assert out.image.shape == (3, 200, 400, 3)


def test_paste_rejects_mismatched_inputs_clearly():
    img = smooth_image(3, 200, 400)
    faces = two_frame_faces()
    crops = crop_faces(img, faces, crop_size=64)
    with pytest.raises(InputError, match="restored crop"):
        paste_faces(img, crops[:2], faces)
    with pytest.raises(InputError, match="detected on"):
        paste_faces(img[:, :100], crops, faces)
    with pytest.raises(InputError, match="batch"):
        paste_faces(img[:2], crops, faces)
    with pytest.raises(InputError, match="visibility"):
        paste_faces(img, crops, faces, visibility=2)
    with pytest.raises(InputError, match="background"):
        paste_faces(img, crops, faces, upscale=2, background=img)
    with pytest.raises(InputError):
        paste_faces(img, crops, faces, color_match="histogram")
    with pytest.raises(InputError):
        crop_mask(64, feather=0.4, margin=0.2)


def test_empty_batch_and_no_faces():
    empty = torch.zeros(0, 64, 64, 3)
    none = Faces.empty(64, 64, 0)
    assert crop_faces(empty, none).shape == (0, 512, 512, 3)
    res = paste_faces(empty, torch.zeros(0, 512, 512, 3), none)
    assert res.image.shape == (0, 64, 64, 3) and res.frames_without_faces == []
    img = smooth_image(2, 64, 64)
    res = paste_faces(img, torch.zeros(0, 512, 512, 3), Faces.empty(64, 64, 2))
    assert torch.equal(res.image, img) and res.frames_without_faces == [0, 1]


# --- detection plumbing (random weights) ------------------------------------------------------------

def test_detector_shapes_tiny_images_and_kind_detection():
    det = build_detector("yunet")
    boxes, pts, score = det(torch.rand(2, 3, 70, 90))
    assert boxes.shape[:2] == pts.shape[:2] == score.shape and pts.shape[-2:] == (5, 2)
    faces = detect_faces(torch.rand(2, 8, 8, 3), det, score_threshold=1.01)
    assert len(faces) == 0 and faces.num_frames == 2 and faces.frames_without_faces() == [0, 1]
    faces = detect_faces(torch.rand(1, 40, 50, 4), det, score_threshold=0.0, crop_size=256)  # RGBA, tiny
    assert faces.crop_size == 256 and faces.affine.shape == (len(faces), 2, 3)
    assert len(detect_faces(torch.zeros(0, 32, 32, 3), det)) == 0
    with pytest.raises(InputError):
        detect_faces(torch.rand(1, 0, 32, 3), det)
    assert detector_kind_from_state_dict(det.net.state_dict()) == "yunet"
    with pytest.raises(WeightsError):
        detector_kind_from_state_dict({"foo.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="do not fit"):
        build_detector("yunet", {"model0.conv1.weight": torch.zeros(1)})


def test_retinaface_variants_build_and_tell_apart():
    pytest.importorskip("facexlib")
    mobile = build_detector("retinaface_mobile0.25")
    assert detector_kind_from_state_dict(mobile.net.state_dict()) == "retinaface_mobile0.25"
    boxes, pts, score = mobile(torch.rand(1, 3, 64, 64))
    assert score.shape[1] == 2 * (8 * 8 + 4 * 4 + 2 * 2)
    one_mb = build_detector("retinaface_mobile0.25_1mb", mobile.net.state_dict())
    slopes = {m.negative_slope for m in one_mb.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.0}
    sd = build_detector("retinaface_resnet50").net.state_dict()
    assert detector_kind_from_state_dict(sd) == "retinaface_resnet50"


# --- chunking and benchmark -------------------------------------------------------------------------

def test_run_chunked_halves_on_oom_and_reraises_others():
    seen = []

    def fn(start, stop):
        if stop - start > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        seen.append((start, stop))

    assert run_chunked(fn, 7, 8) == 2
    assert seen == [(0, 2), (2, 4), (4, 6), (6, 7)]

    def bad(start, stop):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        run_chunked(bad, 3, 2)
    with pytest.raises(torch.OutOfMemoryError):
        run_chunked(fn, 4, 4, min_chunk=4)


def test_bench_paste_reports_per_face_cost():
    r = bench_paste(height=120, width=200, face_size=40, crop_size=64, faces_per_frame=2, repeats=2, warmup=0)
    assert r["faces"] == 2 and r["ms_per_call"] > 0 and r["ms_per_face"] >= 0
    f = synthetic_faces(2, 3, 100, 300, 30)
    assert f.counts_per_frame().tolist() == [3, 3]


def test_parsing_masks_plug_into_paste():
    pytest.importorskip("facexlib")
    from bfr_core.faces.parsing import build_parser, parse_masks, parser_kind_from_state_dict

    parser = build_parser("bisenet")
    assert parser_kind_from_state_dict(parser.net.state_dict()) == "bisenet"
    with pytest.raises(WeightsError):
        parser_kind_from_state_dict({"x": torch.zeros(1)})
    img = smooth_image(3, 200, 400)
    faces = two_frame_faces()[[1]]
    faces.num_frames = 3
    crops = crop_faces(img, faces, crop_size=64)
    masks = parse_masks(crops, parser)
    assert masks.shape == (1, 64, 64) and 0 <= float(masks.min()) and float(masks.max()) <= 1
    zero = paste_faces(img, crops * 0, faces, crop_masks=torch.zeros(1, 64, 64))
    assert torch.equal(zero.image, img)  # an empty parsing mask pastes nothing
    half = torch.zeros(1, 64, 64)
    half[:, :, :32] = 1
    res = paste_faces(img, crops, faces, crop_masks=half)
    assert res.mask.max() > 0.9 and (res.mask > 0.5).sum() < (paste_faces(img, crops, faces).mask > 0.5).sum() * 0.7

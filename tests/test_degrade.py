"""Synthetic degradations: seeding, overrides, kernels, resampling, noise, JPEG, gradients, errors.

References are independent: torch's F.interpolate, OpenCV's filter2D / resize / imencode (the GFPGAN code path),
Pillow's JPEG, scipy's Bessel J1 and closed-form kernel moments.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bfr_core import degrade as D
from bfr_core.degrade import PRESETS, blur_kernels, degrade, jpeg_pillow, parse_overrides, sample_params
from bfr_core.errors import InputError

# Overrides that make each stage a no-op, so one stage can be measured alone.
QUIET_GFPGAN = dict(kernel="iso", sigma_x=0.01, scale=1, noise=0)
QUIET_REALESRGAN = dict(kernel="iso", sigma_x=0.01, resize="keep", resize_scale=1, noise_type="gaussian", noise=0,
                        blur2=False, resize_scale2=1, noise_type2="gaussian", noise2=0, final_sinc=False, scale=1)


def smooth_images(b: int = 2, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    """Smooth random colour images in [0, 1] (low-frequency noise upsampled), face-like enough for JPEG."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, 3, max(2, h // 8), max(2, w // 8), generator=g)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture
def face(shared_data) -> torch.Tensor:
    """A real FFHQ face at 128², (1, 3, 128, 128) in [0, 1]."""
    from PIL import Image

    path = shared_data / "hq" / "00000.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((128, 128), Image.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


# ------------------------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("preset", list(PRESETS))
def test_same_seed_same_output_different_seed_differs(preset):
    x = smooth_images()
    y1, p1 = degrade(x, preset, seed=7)
    y2, p2 = degrade(x, preset, seed=7)
    y3, p3 = degrade(x, preset, seed=8)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert torch.equal(y1, y2)
    assert p1.as_records() == p2.as_records()
    assert not torch.equal(y1, y3)
    assert p1.as_records() != p3.as_records()
    # degradation changed the image, and the 8-bit output is quantised
    assert (y1 - x).abs().mean() > 1e-3
    assert torch.equal(y1, (y1 * 255).round() / 255)


def test_batch_equals_per_image_runs_with_mixed_parameters():
    x = smooth_images(3, 32, 36)
    seeds = [11, 12, 13]
    y, p = degrade(x, "realesrgan", seeds, jpeg="none", quantize=False)
    # the three images really were degraded differently (sizes, kernels, noise models)
    rec = p.as_records()
    assert len({(r["kernel_size"], r["resize_scale"], r["noise_type"]) for r in rec}) == 3
    for i, s in enumerate(seeds):
        yi, pi = degrade(x[i: i + 1], "realesrgan", s, jpeg="none", quantize=False)
        assert pi.as_records()[0] == rec[i]
        torch.testing.assert_close(yi[0], y[i], atol=1e-5, rtol=0)
    assert sample_params("realesrgan", 11, 3).seeds == (11, 12, 13)  # an integer seed means seed + i
    # differentiable JPEG on images of different LQ sizes in one canvas
    y, p = degrade(x, "gpen", seeds, jpeg="kornia")
    assert len(set(p.values["scale"].tolist())) == 3
    for i, s in enumerate(seeds):
        torch.testing.assert_close(degrade(x[i: i + 1], "gpen", s, jpeg="kornia")[0][0], y[i], atol=2e-4, rtol=0)
    # Pillow: the same up to rare one-level rounding flips before the codec
    y, _ = degrade(x, "gfpgan", seeds)
    for i, s in enumerate(seeds):
        d = (degrade(x[i: i + 1], "gfpgan", s)[0][0] - y[i]).abs()
        assert (d > 1.5 / 255).float().mean() < 1e-3


# ------------------------------------------------------------------------------------------- overrides


def test_overrides_fix_range_choose_and_leave_other_draws_alone():
    base = sample_params("gfpgan", seed=3, batch=64)
    fixed = sample_params("gfpgan", seed=3, batch=64, scale=16, jpeg_quality=[60, 70], kernel="aniso", gray=True)
    v = fixed.values
    assert torch.all(v["scale"] == 16)
    q = v["jpeg_quality"]
    assert torch.all((q >= 60) & (q <= 70)) and torch.all(q == q.round()) and len(set(q.tolist())) > 5
    assert all(r["kernel"] == "aniso" and r["gray"] is True for r in fixed.as_records())
    for name in ("kernel_size", "sigma_x", "haze", "haze_alpha", "noise"):
        assert torch.equal(base.values[name], v[name]), name
    # defaults follow the papers' ranges
    b = base.values
    assert set(b["kernel_size"].tolist()) == {39.0, 41.0}
    assert b["scale"].min() >= 0.8 and b["scale"].max() <= 8
    assert b["noise"].min() >= 0 and b["noise"].max() <= 20
    assert not b["gray"].any() and not b["haze"].any()  # VSPBFR's restoration extras are off by default
    iso = [r for r in base.as_records() if r["kernel"] == "iso"]
    assert iso and all(r["sigma_y"] == r["sigma_x"] and r["theta"] == 0 for r in iso)

    g = sample_params("gpen", seed=0, batch=200).values
    assert torch.allclose(g["sigma"] * 10, (g["sigma"] * 10).round()) and g["sigma"].max() <= 5
    assert g["scale"].max() <= 32 and g["jpeg_quality"].min() >= 50

    r = sample_params("realesrgan", seed=0, batch=400, kernel=["iso", "sinc"], resize_mode2="area").as_records()
    assert {x["kernel"] for x in r} == {"iso", "sinc"} and {x["resize_mode2"] for x in r} == {"area"}
    down = [x["resize_scale"] for x in r if x["resize"] == "down"]
    assert down and min(down) >= 0.15 and max(down) <= 1
    assert all(x["omega_c"] >= math.pi / 3 - 1e-9 for x in r if x["kernel_size"] < 13)
    assert 0.7 < np.mean([x["final_sinc"] for x in r]) < 0.9


def test_fixed_scale_downsamples_by_that_factor():
    """A grating finer than the LQ's Nyquist limit is wiped out at scale 4; a coarse one survives."""
    h = w = 96
    cols = torch.arange(w, dtype=torch.float32)

    def grating(period: float) -> torch.Tensor:
        return (0.5 + 0.4 * torch.sin(2 * math.pi * cols / period)).expand(1, 3, h, w).contiguous()

    def kept(period: float, scale: float) -> float:
        x = grating(period)
        y, _ = degrade(x, "gfpgan", 0, jpeg="none", **{**QUIET_GFPGAN, "scale": scale})
        a, b = x - x.mean(), y - y.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    assert kept(3.0, 1) > 0.99  # no-op settings keep even fine detail
    assert kept(3.0, 4) < 0.2  # period 3 < 2·4: gone after ↓4
    assert kept(32.0, 4) > 0.95  # period 32 > 2·4: kept


def test_noise_sigma_is_measured_on_a_flat_image():
    x = torch.full((2, 3, 128, 128), 0.5)
    for preset, extra in (("gfpgan", QUIET_GFPGAN), ("gpen", dict(sigma=0, scale=1))):
        y, _ = degrade(x, preset, 5, jpeg="none", quantize=False, **{**extra, "noise": 10})
        assert float((y - x).std()) == pytest.approx(10 / 255, rel=0.03), preset
    # gray noise: one plane shared by the channels
    y, _ = degrade(x, "realesrgan", 5, jpeg="none", quantize=False, **{**QUIET_REALESRGAN, "noise": 10, "gray_noise": True})
    r = y - x
    assert float(r.std()) == pytest.approx(10 / 255, rel=0.03)
    torch.testing.assert_close(r[:, 0], r[:, 1])


def test_poisson_noise_variance_follows_the_signal():
    """Real-ESRGAN's Poisson noise on an image with 256 levels: Var = x / 256 per pixel (times scale²)."""
    ramp = torch.linspace(0, 1, 256).expand(1, 3, 96, 256).contiguous()
    over = {**QUIET_REALESRGAN, "noise_type": "poisson", "poisson_scale": 1.0, "gray_noise": False}
    y, _ = degrade(ramp, "realesrgan", 2, jpeg="none", quantize=False, **over)
    r = y - ramp
    inner = slice(32, 224)  # away from the clamps at 0 and 1
    expected = float(ramp[..., inner].mean()) / 256
    assert float(r[..., inner].pow(2).mean()) == pytest.approx(expected, rel=0.05)
    y2, _ = degrade(ramp, "realesrgan", 2, jpeg="none", quantize=False, **{**over, "poisson_scale": 2.0})
    assert float((y2 - ramp)[..., inner].pow(2).mean()) == pytest.approx(4 * expected, rel=0.05)


def test_fixed_jpeg_quality_equals_pillow_of_the_pre_jpeg_image():
    x = smooth_images(2, 64, 72)
    pre, _ = degrade(x, "gfpgan", 1, jpeg="none", **QUIET_GFPGAN)
    out, p = degrade(x, "gfpgan", 1, jpeg_quality=75, **QUIET_GFPGAN)
    assert set(p.values["jpeg_quality"].tolist()) == {75.0}
    assert torch.equal(out, jpeg_pillow(pre, 75))
    assert (out - pre).abs().max() > 1 / 255  # the JPEG did something


def test_pillow_jpeg_and_gfpgan_pipeline_match_opencv():
    """The GFPGAN code path: cv2 filter2D, INTER_LINEAR resizes and cv2's JPEG."""
    cv2 = pytest.importorskip("cv2")
    x = smooth_images(1, 203, 255, seed=4)
    img = x[0].permute(1, 2, 0).numpy().copy()

    def cv2_jpeg(a: np.ndarray, q: int) -> np.ndarray:
        _, enc = cv2.imencode(".jpg", (np.clip(a, 0, 1) * 255).round().astype(np.uint8)[..., ::-1],
                              [int(cv2.IMWRITE_JPEG_QUALITY), q])
        return cv2.imdecode(enc, 1)[..., ::-1].astype(np.float32) / 255

    assert np.array_equal(jpeg_pillow(x, 40)[0].permute(1, 2, 0).numpy(), cv2_jpeg(img, 40))

    theta, scale, q = 0.5, 3.3, 70
    ax = np.arange(-20, 21)
    grid = np.stack(np.meshgrid(ax, ax), -1).astype(np.float64)  # (y, x, [x, y])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([3.0**2, 1.2**2]) @ rot.T)
    k = np.exp(-0.5 * np.sum((grid @ inv) * grid, -1))
    h, w = img.shape[:2]
    small = cv2.resize(cv2.filter2D(img, -1, (k / k.sum()).astype(np.float32)), (int(w // scale), int(h // scale)),
                       interpolation=cv2.INTER_LINEAR)

    def back(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)

    over = dict(kernel="aniso", kernel_size=41, sigma_x=3.0, sigma_y=1.2, theta=theta, scale=scale, noise=0)
    y, _ = degrade(x, "gfpgan", 0, jpeg="none", quantize=False, **over)
    torch.testing.assert_close(y[0], back(small), atol=1e-5, rtol=0)
    # with the JPEG: equal except where float rounding before the codec flips a level and changes a block
    y, _ = degrade(x, "gfpgan", 0, jpeg_quality=q, **over)
    d = (y[0] - (back(cv2_jpeg(small, q)) * 255).round() / 255).abs()
    assert float(d.mean()) < 0.05 / 255 and float(d.max()) <= 3 / 255


# ------------------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("mode", D.RESIZE_MODES)
def test_per_image_resize_matches_torch_interpolate(mode):
    x = smooth_images(2, 37, 53)
    kw = {} if mode == "area" else {"align_corners": False}
    for size in [(11, 17), (37, 53), (80, 61), (1, 1)]:
        got = torch.stack(D.resize(x, size, mode))
        torch.testing.assert_close(got, F.interpolate(x, size=size, mode=mode, **kw), atol=1e-5, rtol=0)
    a, b = D.resize(x, [(11, 17), (80, 61)], [mode, "bicubic"])
    torch.testing.assert_close(a, F.interpolate(x[:1], size=(11, 17), mode=mode, **kw)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(b, F.interpolate(x[1:], size=(80, 61), mode="bicubic", align_corners=False)[0],
                               atol=1e-5, rtol=0)


def test_blur_matches_cv2_filter2d_on_full_partial_and_tiny_images():
    cv2 = pytest.importorskip("cv2")
    x = smooth_images(2, 37, 53)
    k = blur_kernels(["aniso", "plateau_aniso"], [41, 21], [3.0, 2.0], [1.0, 0.5], [0.7, -1.2], [1.0, 1.5])

    def ref(img: torch.Tensor, kern: torch.Tensor) -> torch.Tensor:
        out = cv2.filter2D(img.permute(1, 2, 0).numpy().copy(), -1, kern.numpy().astype(np.float32),
                           borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out.reshape(*img.shape[1:], 3)).permute(2, 0, 1)

    full = D._blur(D._Canvas(x, [37, 37], [53, 53]), k).x
    part = D._blur(D._Canvas(x, [37, 20], [53, 25]), k).x  # image 1 lives in the top-left 20×25
    for i in range(2):
        torch.testing.assert_close(full[i], ref(x[i], k[i]), atol=1e-5, rtol=0)
    torch.testing.assert_close(part[1, :, :20, :25], ref(x[1, :, :20, :25], k[1]), atol=1e-5, rtol=0)
    tiny = torch.rand(1, 3, 5, 4)  # smaller than the kernel: reflected many times, as OpenCV does
    torch.testing.assert_close(D._blur(D._Canvas(tiny, [5], [4]), k[:1]).x[0], ref(tiny[0], k[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("theta", [0.0, 0.6, -1.1, 2.0])
def test_anisotropic_kernel_moments_and_orientation(theta):
    k = blur_kernels("aniso", 41, 3.0, 1.0, theta)[0]
    assert float(k.sum()) == pytest.approx(1, abs=1e-12)
    r = torch.arange(-20, 21, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    cxx, cyy, cxy = (k * xx * xx).sum(), (k * yy * yy).sum(), (k * xx * yy).sum()
    evals = torch.linalg.eigvalsh(torch.stack([torch.stack([cxx, cxy]), torch.stack([cxy, cyy])]))
    assert float(evals[1]) == pytest.approx(9.0, rel=1e-3) and float(evals[0]) == pytest.approx(1.0, rel=1e-3)
    angle = 0.5 * math.atan2(2 * float(cxy), float(cxx - cyy))  # major axis, from +x toward +y (down)
    assert math.cos(2 * (angle - theta)) == pytest.approx(1.0, abs=1e-6)


def test_kernel_families_sum_to_one_are_symmetric_and_sized():
    kinds = list(D.KERNEL_KINDS)
    k = blur_kernels(kinds, [7, 9, 11, 13, 15, 17, 21], 2.0, 1.0, 0.4, beta=2.0, omega_c=1.2)
    assert k.shape == (7, 21, 21)
    torch.testing.assert_close(k.sum((1, 2)), torch.ones(7, dtype=torch.float64))
    torch.testing.assert_close(k, k.flip(1, 2))  # point-symmetric: correlation = convolution
    assert k[0, :7, :].abs().sum() == 0 and k[0, 7:14, 7:14].abs().sum() > 0  # a 7-tap kernel in a 21 canvas
    iso = blur_kernels("iso", 21, 2.0, sigma_y=5.0, theta=1.0)[0]  # iso ignores sigma_y and theta
    torch.testing.assert_close(iso, iso.T)
    torch.testing.assert_close(iso, blur_kernels("iso", 21, 2.0)[0])
    plateau_flat = blur_kernels("plateau_iso", 21, 2.0, beta=1.0)[0]
    gauss = blur_kernels("iso", 21, 2.0)[0]
    assert plateau_flat[10, 0] > gauss[10, 0]  # plateau kernels have heavy tails

    special = pytest.importorskip("scipy.special")
    w = 1.2
    sinc = blur_kernels("sinc", 21, omega_c=w)[0].numpy()
    ax = np.arange(-10, 11)
    rad = np.hypot(*np.meshgrid(ax, ax))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = w * special.j1(w * rad) / (2 * np.pi * rad)
    ref[10, 10] = w**2 / (4 * np.pi)
    np.testing.assert_allclose(sinc, ref / ref.sum(), atol=1e-7)  # torch's J1 is good to ~1e-6 relative


# ------------------------------------------------------------------------------------------- real faces


@pytest.mark.data
def test_psnr_drops_monotonically_with_scale_on_a_real_face(face):
    def run(preset: str, scale: float, **over) -> float:
        return psnr(degrade(face, preset, 0, scale=scale, noise=0, jpeg_quality=90, **over)[0], face)

    g = [run("gfpgan", s, kernel="iso", sigma_x=1.0, kernel_size=21) for s in (1, 2, 4, 8, 16)]
    assert all(a > b for a, b in zip(g, g[1:])), g
    assert g[0] > 30 and g[-1] < 25
    p = [run("gpen", s, sigma=1.0) for s in (2, 8, 32, 64)]
    assert all(a > b for a, b in zip(p, p[1:])), p
    r = [psnr(degrade(face, "realesrgan", 0, scale=s, **{k: v for k, v in QUIET_REALESRGAN.items() if k != "scale"})[0],
              face) for s in (2, 4, 8)]
    assert all(a > b for a, b in zip(r, r[1:])), r


# ------------------------------------------------------------------------------------------- shapes, ranges, gradients


def test_odd_and_tiny_sizes():
    y, _ = degrade(smooth_images(1, 511, 333), "gfpgan", 0)
    assert y.shape == (1, 3, 511, 333) and torch.isfinite(y).all()
    y, p = degrade(smooth_images(2, 37, 53), "realesrgan", 0, resize="down", resize_scale=[0.15, 0.3])
    assert y.shape == (2, 3, 37, 53)
    y, _ = degrade(smooth_images(2, 8, 8), "gpen", 0, scale=64)  # 1×1 LQ, 31-tap kernel on 8 px
    assert y.shape == (2, 3, 8, 8) and torch.isfinite(y).all()
    assert float(y.std((2, 3)).max()) < 1e-6  # a 1×1 LQ resized back is flat


def test_value_range_and_dtype_are_kept():
    x = smooth_images()
    y01, _ = degrade(x, "gpen", 3)
    y11, _ = degrade(x * 2 - 1, "gpen", 3, value_range=(-1, 1))
    torch.testing.assert_close(y11, y01 * 2 - 1, atol=1e-5, rtol=0)
    yh, _ = degrade(x.to(torch.bfloat16), "gpen", 3)
    assert yh.dtype == torch.bfloat16


@pytest.mark.parametrize("preset", list(PRESETS))
def test_differentiable_path_has_gradients(preset):
    x = smooth_images(2, 32, 32).requires_grad_(True)
    y, _ = degrade(x, preset, 1, jpeg="kornia", noise_type="poisson") if preset == "realesrgan" \
        else degrade(x, preset, 1, jpeg="kornia")
    assert y.requires_grad
    y.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not torch.equal(y, (y * 255).round() / 255)  # no 8-bit rounding on the differentiable path


def test_input_errors_are_clear():
    x = smooth_images()
    cases = [
        (lambda: degrade(x.permute(0, 2, 3, 1), "gfpgan"), "split_alpha"),
        (lambda: degrade(x[0], "gfpgan"), "batch dimension"),
        (lambda: degrade(x[:, :1], "gfpgan"), "RGB"),
        (lambda: degrade((x * 255).to(torch.uint8), "gfpgan"), "float"),
        (lambda: degrade(x * 255, "gfpgan"), "value_range"),
        (lambda: degrade(x * 2 - 1, "gfpgan"), "value_range"),
        (lambda: degrade(torch.where(x > 0.5, torch.nan, x), "gfpgan"), "NaN"),
        (lambda: degrade(x[:, :, :0], "gfpgan"), "empty"),
        (lambda: degrade(x, "codeformer"), "gfpgan, gpen, realesrgan"),
        (lambda: degrade(x, "gfpgan", scael=4), "scale"),
        (lambda: degrade(x, "gfpgan", jpeg_quality=150), "jpeg_quality"),
        (lambda: degrade(x, "gfpgan", kernel_size=40), "odd"),
        (lambda: degrade(x, "gfpgan", kernel="sinc"), "iso, aniso"),
        (lambda: degrade(x, "gfpgan", noise=[10, 0]), "low ≤ high"),
        (lambda: degrade(x, "gfpgan", gray=2.0), "probability"),
        (lambda: degrade(x, "gfpgan", seed=[1, 2, 3]), "3 seeds"),
        (lambda: degrade(x, "gfpgan", jpeg="cv2"), "pillow"),
        (lambda: parse_overrides("scale"), "name=value"),
    ]
    for fn, needle in cases:
        with pytest.raises(InputError, match=needle):
            fn()


def test_parse_overrides_and_records_for_the_node_and_cli():
    o = parse_overrides("scale=16, noise=0:10; kernel=iso|aniso\njpeg_quality=[60, 80], gray=true, resize_mode=area")
    assert o == {"scale": 16, "noise": [0.0, 10.0], "kernel": ["iso", "aniso"], "jpeg_quality": [60, 80],
                 "gray": True, "resize_mode": "area"}
    o.pop("resize_mode")
    y, p = degrade(smooth_images(), "gfpgan", 0, **o)
    rec = p.as_records()
    assert [r["seed"] for r in rec] == [0, 1]
    assert isinstance(rec[0]["kernel"], str) and isinstance(rec[0]["gray"], bool) and rec[0]["gray"]
    assert isinstance(rec[0]["jpeg_quality"], int) and isinstance(rec[0]["kernel_size"], int)
    assert "scale=16" in p.summary(0)
    assert "kernel_size" in PRESETS["gfpgan"].describe()


def test_training_degradation_is_seeded_by_the_generator_and_picklable():
    fn = D.training_degradation("gpen", jpeg_quality=[70, 90])
    fn2 = pickle.loads(pickle.dumps(fn))
    x = smooth_images()
    a = fn(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, fn2(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, fn(x, torch.Generator().manual_seed(6)))
    with pytest.raises(InputError):
        D.training_degradation("gpen", kernel="aniso")

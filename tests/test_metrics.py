"""PSNR/SSIM against hand-computed values, FID's Fréchet distance, identity, the suite, safe readers."""

from __future__ import annotations

import io
import math
import pickle
import zipfile

import numpy as np
import pytest
import torch

from bfr_core.errors import InputError, UnsafeCheckpointError
from bfr_core.metrics import (FeatureStats, IdentityMetric, MetricSuite, arcface_embedder, frechet_distance,
                              identity_similarity, psnr, ssim)
from bfr_core.metrics.assets import load_numpy_pickle, read_torchscript_tensors
from bfr_core.metrics.identity import Embedder


def const(v: float, b: int = 1, h: int = 16, w: int = 16) -> torch.Tensor:
    """An image whose every RGB value is the 8-bit level ``v``."""
    return torch.full((b, 3, h, w), v / 255.0)


# ------------------------------------------------------------------------------------------ PSNR / SSIM


def test_psnr_by_hand_rgb_and_y():
    a, b = const(110), const(100)
    # RGB: every value differs by 10 → MSE 100.
    assert psnr(a, b, channel="rgb").item() == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    # Y (BT.601, MATLAB): a gray level v maps to 16 + v·219/255, so the Y difference is 10·219/255.
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    assert psnr(a, b, channel="y").item() == pytest.approx(10 * math.log10(255**2 / dy**2), abs=1e-9)


def test_psnr_identical_is_inf_and_one_pixel_error():
    a = const(50)
    assert math.isinf(psnr(a, a.clone()).item())
    b = a.clone()
    b[0, :, 3, 4] = 60 / 255  # one pixel of 16×16 off by 10 in all channels → MSE 100/256
    assert psnr(b, a, channel="rgb").item() == pytest.approx(10 * math.log10(255**2 * 256 / 100), abs=1e-9)


def test_quantize_and_crop_border():
    a = const(100)
    b = a + 0.3 / 255  # rounds back to level 100
    assert math.isinf(psnr(b, a).item())
    assert psnr(b, a, quantize=False).item() < 100
    c = a.clone()
    c[..., 0, :] = 0  # damage only the top row; a 1-pixel crop removes it
    assert math.isinf(psnr(c, a, crop_border=1).item())
    assert not math.isinf(psnr(c, a).item())


def test_ssim_by_hand_constant_images():
    # Zero variance: SSIM reduces to the luminance term (2ab + c1) / (a² + b² + c1).
    c1 = (0.01 * 255) ** 2
    for x, y in ((110, 100), (200, 30)):
        want = (2 * x * y + c1) / (x * x + y * y + c1)
        assert ssim(const(x), const(y), channel="rgb").item() == pytest.approx(want, abs=1e-12)
    assert ssim(const(80), const(80)).item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_by_hand_contrast_term():
    # Columns alternate 0/255 (a) or are flat 127.5→128 (b): every 11×11 window of a has mean μa and
    # variance σa² (population), b has μb, σb = 0, σab = 0, so SSIM = l·(c2/(σa² + c2)).
    w = torch.zeros(1, 3, 11, 12)
    w[..., 1::2] = 1.0
    flat = torch.full_like(w, 128 / 255)
    from bfr_core.metrics.full_reference import gaussian_window

    g = gaussian_window().sum(0)  # 1-D weights over columns
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for start in (0, 1):  # the two valid window positions along the 12 columns
        cols = torch.tensor([255.0 if (start + k) % 2 else 0.0 for k in range(11)], dtype=torch.float64)
        mu = float((g * cols).sum())
        var = float((g * cols * cols).sum()) - mu * mu
        vals.append((2 * mu * 128 + c1) / (mu * mu + 128 * 128 + c1) * c2 / (var + c2))
    assert ssim(w, flat, channel="rgb").item() == pytest.approx(sum(vals) / 2, abs=1e-10)


def test_batched_equals_unbatched_and_y_rgb_differ():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 24, 20, generator=g)
    b = (a + 0.1 * torch.randn(3, 3, 24, 20, generator=g)).clamp(0, 1)
    for fn in (psnr, ssim):
        for ch in ("y", "rgb"):
            batched = fn(a, b, channel=ch, crop_border=2)
            single = torch.cat([fn(a[i:i + 1], b[i:i + 1], channel=ch, crop_border=2) for i in range(3)])
            assert batched.shape == (3,) and batched.dtype == torch.float64
            torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)
    assert not torch.allclose(psnr(a, b, channel="y"), psnr(a, b, channel="rgb"))


@pytest.mark.parametrize("bad", [
    lambda: psnr(const(1, h=16), const(1, h=18)),
    lambda: psnr(torch.rand(3, 16, 16), torch.rand(3, 16, 16)),
    lambda: psnr(const(1), const(1), channel="lab"),
    lambda: ssim(const(1, h=8, w=8), const(1, h=8, w=8)),
    lambda: psnr(const(1), const(1), crop_border=8),
    lambda: psnr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)),
])
def test_bad_inputs_raise_input_error(bad):
    with pytest.raises(InputError):
        bad()


# ------------------------------------------------------------------------------------------ FID maths


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    s = FeatureStats.from_features(a)
    assert s.mu.shape == (8,) and s.sigma.shape == (8, 8) and s.n == 400
    np.testing.assert_allclose(s.sigma, np.cov(a, rowvar=False))
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-8
    shift = np.arange(8) * 0.1
    assert frechet_distance(s.mu + shift, s.sigma, s.mu, s.sigma) == pytest.approx(float(shift @ shift), abs=1e-8)
    # Diagonal covariances: d² = Σ (√σ1 − √σ2)².
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    want = float(((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum())
    assert frechet_distance(np.zeros(3), np.diag(s1), np.zeros(3), np.diag(s2)) == pytest.approx(want, abs=1e-10)


def test_frechet_distance_singular_covariance_and_identical_sets():
    rng = np.random.default_rng(1)
    few = rng.normal(size=(5, 32))  # rank-deficient covariance, as FID on a handful of images
    s = FeatureStats.from_features(few)
    # sqrtm of a singular matrix is only accurate to ~1e-7 of the trace (here ≈ 2·Tr Σ ≈ 60)
    assert abs(frechet_distance(s.mu, s.sigma, s.mu, s.sigma)) < 1e-5
    t = FeatureStats.from_features(few + 0.5)
    assert frechet_distance(t.mu, t.sigma, s.mu, s.sigma) == pytest.approx(0.25 * 32, rel=1e-6)


def test_feature_stats_roundtrip_without_pickle(tmp_path):
    s = FeatureStats.from_features(torch.randn(10, 4, generator=torch.Generator().manual_seed(2)))
    path = s.save(tmp_path / "stats.npz")
    back = FeatureStats.load(path)
    np.testing.assert_array_equal(back.mu, s.mu)
    np.testing.assert_array_equal(back.sigma, s.sigma)
    assert back.n == 10 and back.extractor == s.extractor
    np.savez(tmp_path / "evil.npz", mu=np.array([object()], dtype=object), sigma=np.eye(1))
    with pytest.raises(InputError):
        FeatureStats.load(tmp_path / "evil.npz")
    with pytest.raises(InputError):
        FeatureStats.from_features(np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------ identity


def _pool_embedder(images: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1) - 0.5


def test_identity_similarity_with_any_embedder():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 32, 32, generator=g)
    b = torch.rand(2, 3, 32, 32, generator=g)
    metric = IdentityMetric(Embedder(_pool_embedder, "pool4x4"))
    same = metric(a, a.clone())
    torch.testing.assert_close(same, torch.ones(2), atol=1e-6, rtol=0)
    ab, ba = metric(a, b), metric(b, a)
    torch.testing.assert_close(ab, ba)
    assert (ab < 1).all() and (ab >= -1).all()
    want = torch.nn.functional.cosine_similarity(_pool_embedder(a), _pool_embedder(b))
    torch.testing.assert_close(ab, want)
    assert metric.name == "pool4x4"
    # references of another size are embedded separately
    torch.testing.assert_close(identity_similarity(a, torch.nn.functional.interpolate(a, 64), _pool_embedder)[0],
                               torch.tensor(1.0), atol=1e-2, rtol=0)


def test_arcface_embedder_names_the_network():
    from bfr_core.models.arcface import IResNet, IResNetConfig

    torch.manual_seed(0)
    net = IResNet(IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), num_features=16)).eval()
    emb = arcface_embedder(net, source="tiny test net")
    assert emb.name.startswith("ArcFace iresnet10 (tiny test net)")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    assert emb(x).shape == (2, 16)
    torch.testing.assert_close(IdentityMetric(emb)(x, x), torch.ones(2), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ suite


def test_suite_rows_summary_and_description():
    g = torch.Generator().manual_seed(5)
    gt = torch.rand(3, 3, 32, 32, generator=g)
    out = (gt + 0.05 * torch.randn(3, 3, 32, 32, generator=g)).clamp(0, 1)
    suite = MetricSuite(["psnr", "ssim", "psnr_rgb", "identity"], identity=IdentityMetric(Embedder(_pool_embedder, "pool")))
    rows = suite.update(out[:2], gt[:2], ["a.png", "b.png"]) + suite.update(out[2:], gt[2:], ["c.png"])
    assert [r["image"] for r in rows] == ["a.png", "b.png", "c.png"]
    assert set(rows[0]) == {"image", "psnr", "ssim", "psnr_rgb", "identity"}
    assert rows[2]["psnr"] == pytest.approx(psnr(out[2:], gt[2:]).item())
    s = suite.summary()
    assert s["images"] == 3
    assert s["ssim"] == pytest.approx(ssim(out, gt).mean().item())
    assert suite.describe()["identity"] == "pool"
    with pytest.raises(InputError):
        suite.update(out, None)
    with pytest.raises(InputError):
        MetricSuite(["psnr", "sharpness"])


def test_suite_no_reference_niqe():
    suite = MetricSuite(["niqe"])
    assert not suite.needs_reference
    img = torch.rand(1, 3, 96, 192, generator=torch.Generator().manual_seed(6))
    row = suite.update(img)[0]
    assert math.isfinite(row["niqe"]) and row["niqe"] > 0


# ------------------------------------------------------------------------------------------ safe readers


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_numpy_pickle_reader_accepts_arrays_and_refuses_code():
    good = pickle.dumps({"Net_0": {"Conv_0": {"kernel": np.ones((1, 1, 2, 3), np.float32)}}}, protocol=3)
    assert load_numpy_pickle(good)["Net_0/Conv_0/kernel"].shape == (1, 1, 2, 3)
    with pytest.raises(UnsafeCheckpointError):
        load_numpy_pickle(pickle.dumps({"a": _Evil()}))
    with pytest.raises(UnsafeCheckpointError):  # an object array would smuggle arbitrary objects
        load_numpy_pickle(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))


def test_torchscript_reader_refuses_code_and_reads_a_real_module(tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 1)
            self.stride = 2

        def forward(self, x):
            return self.conv(x)

    path = tmp_path / "tiny.pt"
    import warnings

    model = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))
    items = read_torchscript_tensors(path.read_bytes())
    torch.testing.assert_close(items["conv.weight"], model.conv.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(items["conv.bias"], model.conv.bias.detach(), rtol=0, atol=0)
    assert items["stride"] == 2

    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": _Evil()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        read_torchscript_tensors(evil.getvalue())


# ------------------------------------------------------------------------------------------ missing / wrong weights


def test_missing_metric_weights_name_the_fix(tmp_path, monkeypatch):
    from bfr_core.errors import WeightsError
    from bfr_core.metrics import load_inception, load_lpips

    pytest.importorskip("lpips")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(WeightsError, match="bfr_core.metrics lpips"):
        load_lpips("alex")
    with pytest.raises(WeightsError, match="bfr_core.metrics inception"):
        load_inception()
    with pytest.raises(InputError):
        load_lpips("squeeze")
    from bfr_core.metrics import dlib_embedder

    with pytest.raises(WeightsError, match="dlib"):  # either dlib itself or its model files are missing
        dlib_embedder(tmp_path)


def test_conversion_refuses_files_that_are_not_the_pinned_release(tmp_path):
    from bfr_core.errors import WeightsError
    from bfr_core.metrics import convert_inception, convert_lpips

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "alexnet.ckpt").write_bytes(pickle.dumps({"AlexNet_0": {}}, protocol=3))
    with pytest.raises(WeightsError, match="sha256"):
        convert_lpips(tmp_path, ["alex"], dest_dir=tmp_path / "out")
    (tmp_path / "default_1.pt").write_bytes(b"PK not really")
    with pytest.raises(WeightsError, match="sha256"):
        convert_inception(tmp_path / "default_1.pt", dest_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

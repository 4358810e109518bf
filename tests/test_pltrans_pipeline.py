"""PLTrans pipeline (seeds, chunks, progress, precision, errors) and the Fig. 3/4 diagnostics."""

from __future__ import annotations

import json
import types

import pytest
import torch

from bfr_core.errors import InputError, Interrupted
from bfr_core.models.pltrans import PLTrans
from bfr_core.pipelines import pltrans_diagnostics as diag
from bfr_core.pipelines.pltrans import PLTransPipeline

from .pltrans_tiny import tiny_pltrans


@pytest.fixture(scope="module")
def model() -> PLTrans:
    torch.manual_seed(0)
    m = PLTrans(tiny_pltrans())
    with torch.no_grad():  # wake the zero-initialised output layers so the query matters
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.02 * torch.randn_like(p))
    return m.eval()


def _faces(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_pipeline_seeds_chunks_and_progress(model):
    pipe = PLTransPipeline(model, device="cpu")
    faces = _faces(3)
    seen = []
    out = pipe(faces, n=100, s=10, steps=3, seed=5, batch_size=2, on_progress=lambda d, t, p: seen.append((d, t, p)))
    assert out.shape == faces.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    per_chunk = pipe.steps_per_chunk(100, 10, 3)
    assert per_chunk == 2 + 4 and [d for d, _, _ in seen] == list(range(1, 2 * per_chunk + 1))
    assert seen[-1][1] == 2 * per_chunk and seen[-1][2].shape == (1, 3, 32, 32)
    assert torch.allclose(pipe(faces, n=100, s=10, steps=3, seed=5), out, atol=1e-4)  # chunking does not matter
    alone = pipe.restore(faces[2:], n=100, s=10, steps=3, seed=5, first_index=2)
    assert torch.allclose(alone, out[2:], atol=1e-4)
    other = pipe(faces, n=100, s=10, steps=3, seed=6)
    assert not torch.allclose(other, out, atol=1e-4)
    assert not torch.allclose(pipe(faces, n=300, s=10, steps=3, seed=5), out, atol=1e-4)


def test_pipeline_cancels_and_rejects_bad_input(model):
    pipe = PLTransPipeline(model, device="cpu")
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted("stop")

    with pytest.raises(Interrupted):
        pipe(_faces(1), n=50, s=0, steps=5, check_cancel=cancel)
    assert len(calls) == 3
    with pytest.raises(InputError, match="aligned face crops"):
        pipe(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InputError, match="floating-point"):
        pipe(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="0 ≤ s < n"):
        pipe(_faces(1), n=10, s=10)
    with pytest.raises(InputError, match="steps must be"):
        pipe(_faces(1), n=10, s=0, steps=20)


def test_pipeline_bf16_autocast_stays_close(model):
    faces = _faces(1)
    ref = PLTransPipeline(model, device="cpu", dtype="fp32")(faces, n=60, s=0, steps=2)
    low = PLTransPipeline(model, device="cpu", dtype="bf16")(faces, n=60, s=0, steps=2)
    diff = (low - ref).abs()
    assert low.dtype == torch.float32 and diff.mean() < 0.02 and diff.max() < 0.2


def test_distance_vs_steps(model):
    hq = _faces(3, seed=1)
    curves = diag.distance_vs_steps(model, hq, [0, 40, 120], degradations={"x4": diag.downsample_degradation(4)},
                                    steps=2, batch_size=2)
    assert curves.mean.shape == (1, 3) and curves.std.shape == (1, 3) and torch.isfinite(curves.mean).all()
    q_hq, q_lq = model.encode(hq), model.encode(diag.downsample_degradation(4)(hq))
    reg = model.regularizer
    with torch.no_grad():
        d0 = (reg.decode(reg.moments(q_lq)[0]) - q_hq).flatten(1).pow(2).mean(1).sqrt()
        base = (q_lq - q_hq).flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(curves.mean[0, 0], d0.mean(), rtol=1e-4)
    assert torch.allclose(curves.unregularised_mean[0], base.mean(), rtol=1e-4)
    assert curves.best_levels()["x4"] in (0, 40, 120)
    again = diag.distance_vs_steps(model, hq, [40], degradations={"x4": diag.downsample_degradation(4)}, steps=2)
    assert torch.allclose(again.mean[0, 0], curves.mean[0, 1], rtol=1e-4)  # seeded per face, batch-independent
    assert diag.downsample_degradation(64)(hq).shape == hq.shape
    with pytest.raises(InputError, match="regulariser"):
        diag.distance_vs_steps(PLTrans(tiny_pltrans(use_diffusion=False)), hq, [0])


def test_pca_and_tsne_embeddings():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 40, generator=g) * 10
    x = torch.cat([c + torch.randn(20, 40, generator=g) for c in centres])
    labels = torch.arange(3).repeat_interleave(20)
    pca = diag.pca_2d(x)
    xc = x.double() - x.double().mean(0)
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    ref = u[:, :2] * s[:2]
    assert torch.allclose(pca.abs(), ref.abs(), atol=1e-6)
    emb = diag.tsne_2d(x, perplexity=10, iterations=600)
    assert emb.shape == (60, 2) and torch.isfinite(emb).all()
    assert torch.equal(emb[:, 0], diag.tsne_2d(x, perplexity=10, iterations=600)[:, 0])  # deterministic (PCA start)
    for k in range(3):  # each cluster is its own group in the embedding
        assert diag.nn_domain_accuracy(emb[labels == k], emb[labels != k]) == 1.0
    assert diag.nn_domain_accuracy(x[:20], x[20:40]) == 1.0
    mixed = torch.randn(40, 5, generator=g)
    assert diag.nn_domain_accuracy(mixed[::2], mixed[1::2]) < 0.8


def test_feature_embedding_and_plots(model, tmp_path):
    hq = _faces(4, seed=2)
    emb = diag.feature_embedding(model, hq, n=50, steps=2, method="pca")
    assert emb.points.shape == (12, 2) and emb.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert set(emb.separability) == {"q_lq", "q̂_lq"} and all(0 <= v <= 1 for v in emb.separability.values())
    tsne = diag.feature_embedding(model, hq, n=50, steps=2, method="tsne", perplexity=3)
    assert tsne.points.shape == (12, 2)
    with pytest.raises(InputError, match="embedding"):
        diag.feature_embedding(model, hq, method="umap")
    pytest.importorskip("matplotlib")
    curves = diag.distance_vs_steps(model, hq[:2], [0, 30], degradations={"x8": diag.downsample_degradation(8)}, steps=1)
    for path in (diag.plot_distance_curves(curves, tmp_path / "fig4.png"), diag.plot_embedding(emb, tmp_path / "fig3.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnostics_command_line(model, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from PIL import Image

    import bfr_core.weights

    for i in range(4):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(bfr_core.weights, "load_model", lambda *a, **k: types.SimpleNamespace(model=model))
    out = tmp_path / "out"
    assert diag.main(["ckpt", str(tmp_path), "--out", str(out), "--levels", "0,20", "--steps", "1", "--n", "20",
                      "--method", "pca"]) == 0
    report = json.loads((out / "pltrans_diagnostics.json").read_text())
    assert report["faces"] == 4 and report["levels"] == [0, 20] and len(report["mean"]) == 4
    assert report["degradations"] == ["x8", "x16", "x32", "x64"]
    assert (out / "pltrans_fig4.png").exists() and (out / "pltrans_fig3.png").exists()
    # a low-resolution model is measured at the factors that lose as much as the paper's do at 512 px
    assert diag.main(["ckpt", str(tmp_path), "--out", str(out), "--levels", "0", "--steps", "1", "--n", "20",
                      "--method", "pca", "--factors", "2,4"]) == 0
    assert json.loads((out / "pltrans_diagnostics.json").read_text())["degradations"] == ["x2", "x4"]
    with pytest.raises(InputError, match="--factors"):
        diag.main(["ckpt", str(tmp_path), "--out", str(out), "--factors", "0,2"])

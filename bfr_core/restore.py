"""``bfr restore``: restore the faces in photos, folders and videos, on one device or split over processes.

The steps for one whole photo (or one chunk of video frames): detect the faces (YuNet or RetinaFace), cut
aligned crops at the restorer's size, restore them with the chosen method, paste them back with a soft
mask (:mod:`bfr_core.faces`). ``aligned=True`` treats every input as an aligned face crop instead.

Choosing the method (``method="auto"``): the best method whose weights are present or can be downloaded,
in the order VSPBFR (official weights) → PGDiff (official weights; skipped on the CPU, where its 100
diffusion steps of a 512² UNet take minutes per face) → PLTrans (a trained ``pltrans.safetensors`` in a
model folder; no official weights exist) → the built-in compact model, which ships inside the package and
needs nothing. The choice and the reason for it are reported.

Outputs mirror the inputs' relative paths under the output folder. An existing output is never replaced
unless ``overwrite``: a run that was stopped and started again skips the files it already finished (images
are written atomically; a video is written to a hidden ``.part`` file and renamed when complete, so an
interrupted video is started again from its first frame).

Several processes (``accelerate launch --multi_gpu --num_processes N -m bfr_core.cli restore ...`` or
``torchrun --nproc_per_node N -m bfr_core.cli restore ...``) each take every N-th input of the sorted list,
so every output is written by exactly one process. On the CPU add ``--device cpu`` (accelerate's own
``--cpu`` flag starts a single process).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from .errors import BFRError, InputError, WeightsError
from .imageio import IMAGE_SUFFIXES, load_image, save_image
from .videoio import VIDEO_SUFFIXES

if TYPE_CHECKING:
    from .pipelines.base import FaceRestorer

log = logging.getLogger(__name__)

__all__ = ["METHODS", "RestoreOptions", "Item", "Summary", "Reporter", "plan", "choose_method", "build_restorer",
           "load_face_detector", "Job", "run"]

METHODS = ("auto", "vspbfr", "pgdiff", "pltrans", "compact")
#: Registry ids each method needs (PLTrans and the compact model take one file: --model or a default name).
REQUIRED = {
    "vspbfr": ("vspbfr-style-encoder", "vspbfr-code-diffuser", "vspbfr-restoration-net"),
    "pgdiff": ("difface-ddpm-ffhq512", "pgdiff-restorer-rrdb"),
}
PLTRANS_FILE = "pltrans.safetensors"
#: Detectors tried when none is named: present files first (YuNet, then RetinaFace when facexlib is installed).
DETECTORS = ("yunet", "retinaface-resnet50", "retinaface-mobilenet0.25")
COLOR_MATCH = ("none", "mean", "mean_std")


@dataclass
class RestoreOptions:
    """Everything ``bfr restore`` can be told (the CLI flags of the same names)."""

    method: str = "auto"
    model: str | None = None  # weights file for pltrans / compact (auto: its architecture picks the method)
    aligned: bool = False  # inputs are aligned face crops: no detection, no paste-back
    fidelity: float | None = None  # 0..1 where the method has a fidelity knob (PGDiff, PLTrans); None: its default
    visibility: float = 1.0  # blend of the restored face over the original (0..1)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 4  # faces restored at once
    detector: str | None = None  # detector weights (file or registry id); None: the first available
    detector_size: int = 640  # longest side the detector sees (0: full size)
    min_face: float = 0.0  # ignore faces smaller than this (frame pixels)
    max_faces: int = 0  # per image or frame, largest first; 0 = all
    upscale: float = 1.0  # whole photos: output size factor
    color_match: str = "none"
    video_chunk: int = 16  # frames detected and restored together
    overwrite: bool = False
    download: bool = True  # allow weight downloads (False: only files already present)
    ext: str | None = None  # output image format, e.g. ".png" (default: the input's)

    def check(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if self.fidelity is not None and not 0.0 <= self.fidelity <= 1.0:
            raise InputError(f"--fidelity must be between 0 and 1, got {self.fidelity}.")
        if not 0.0 <= self.visibility <= 1.0:
            raise InputError(f"--visibility must be between 0 and 1, got {self.visibility}.")
        if self.batch_size < 1 or self.video_chunk < 1:
            raise InputError("--batch-size and --video-chunk must be at least 1.")
        if not self.upscale > 0:
            raise InputError(f"--upscale must be positive, got {self.upscale}.")
        if self.color_match not in COLOR_MATCH:
            raise InputError(f"--color-match must be one of {', '.join(COLOR_MATCH)}.")
        if self.ext is not None:
            ext = self.ext if self.ext.startswith(".") else f".{self.ext}"
            if ext.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"--ext {self.ext!r}: choose one of {', '.join(sorted(IMAGE_SUFFIXES))}.")
            self.ext = ext.lower()


# ------------------------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class Item:
    """One input file and the output it becomes."""

    source: Path
    target: Path
    kind: str  # "image" or "video"


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def plan(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, options: RestoreOptions) -> list[Item]:
    """Every image and video among ``inputs`` (files, folders searched recursively) with its output path.

    Files already under ``out_dir`` are left out (a rerun into a folder inside the input must not restore
    its own outputs), as are hidden files. Two inputs that would write the same output are an error.
    """
    out = Path(out_dir).expanduser().resolve()
    found: list[tuple[Path, Path]] = []
    for entry in inputs:
        p = Path(entry).expanduser()
        if p.is_file():
            if _kind(p) is None:
                raise InputError(f"{p} is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a video "
                                 f"({', '.join(sorted(VIDEO_SUFFIXES))}).")
            found.append((p, Path(p.name)))
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if f.is_file() and _kind(f) and not any(part.startswith(".") for part in rel.parts) \
                        and not f.resolve().is_relative_to(out):
                    found.append((f, rel))
        else:
            raise InputError(f"input not found: {p}")
    items, seen = [], {}
    for src, rel in found:
        kind = _kind(src)
        target = out / rel
        if kind == "image" and options.ext:
            target = target.with_suffix(options.ext)
        if target in seen:
            raise InputError(f"{seen[target]} and {src} would both be written to {target}; restore their folders "
                             "instead of the single files, or run them into different output folders.")
        seen[target] = src
        items.append(Item(src, target, kind))
    return items


# ------------------------------------------------------------------------------------------------ weights

@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Look only at files already present: the weights layer reads HF_HUB_OFFLINE at call time.

    huggingface_hub reads it once, at import, so it is imported first: a later download in the same
    process must not find the Hub switched off for good.
    """
    import huggingface_hub.constants  # noqa: F401

    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def _present(checkpoint_id: str) -> Path | None:
    """The local file of a registry checkpoint (model folders, Hub cache, our downloads), or None."""
    from .weights import resolve

    with _offline():
        try:
            return resolve(checkpoint_id)[0]
        except WeightsError:
            return None


def _fetch(checkpoint_id: str, allow_download: bool) -> Path:
    """A registry checkpoint: present, else downloaded when allowed (raises with the reason otherwise)."""
    from .weights import resolve

    path = _present(checkpoint_id)
    if path is not None:
        return path
    if not allow_download:
        from .weights import KNOWN

        entry = KNOWN[checkpoint_id]
        raise WeightsError(f"{checkpoint_id} ({entry.filename}) is not present and downloads are off; get it from "
                           f"{entry.sources[0].describe()} and put it in a model folder (BFR_MODELS_DIR).")
    return resolve(checkpoint_id)[0]


def _pltrans_file() -> Path | None:
    from .weights.fetch import find_local

    return find_local(PLTRANS_FILE)


def _model_architecture(spec: str) -> str:
    from .weights import load_checkpoint, resolve
    from .weights.architectures import detect

    path, _ = resolve(spec, allow_download=False)
    names = {m.arch.name for m in detect(load_checkpoint(path))}
    for arch, method in (("compact_restorer", "compact"), ("pltrans", "pltrans")):
        if arch in names:
            return method
    raise WeightsError(f"--model {spec} holds {', '.join(sorted(names)) or 'no known architecture'}; bfr restore takes "
                       "a compact_restorer or pltrans file there (the other methods use their official weights).")


def choose_method(options: RestoreOptions, device: torch.device) -> tuple[str, str]:
    """(method, why): the asked-for method, or for ``auto`` the best one whose weights are present or downloadable.

    ``auto`` downloads what it picks (when downloads are allowed), so the reason can say it is there.
    """
    if options.method != "auto":
        return options.method, "asked for with --method"
    if options.model:
        method = _model_architecture(options.model)
        return method, f"--model {Path(options.model).name} is a {method} model"
    notes: list[str] = []
    for method in ("vspbfr", "pgdiff", "pltrans"):
        if method == "pgdiff" and device.type == "cpu":
            notes.append("pgdiff skipped on the CPU (minutes per face; --method pgdiff forces it)")
            continue
        if method == "pltrans":
            if _pltrans_file() is not None:
                return method, f"a trained {PLTRANS_FILE} is in a model folder"
            notes.append(f"pltrans: no {PLTRANS_FILE} in a model folder (no official weights exist)")
            continue
        missing = [i for i in REQUIRED[method] if _present(i) is None]
        if not missing:
            return method, "its official weights are present"
        if not options.download:
            notes.append(f"{method}: {', '.join(missing)} not present and downloads are off")
            continue
        try:
            for checkpoint_id in missing:
                log.info("auto: downloading %s for %s", checkpoint_id, method)
                _fetch(checkpoint_id, True)
        except WeightsError as e:
            notes.append(f"{method}: {str(e).splitlines()[0][:160]}")
            continue
        return method, "its official weights were downloaded"
    from .pipelines.compact import builtin_weights

    try:
        builtin_weights()
    except WeightsError as e:
        raise WeightsError(f"no restorer is available ({'; '.join(notes)}), and {e}") from None
    return "compact", "the built-in model (no download); " + "; ".join(notes)


def build_restorer(method: str, options: RestoreOptions, device: torch.device) -> "FaceRestorer":
    """The restorer of ``method`` on ``device``, with ``options.fidelity`` mapped onto its own knob."""
    from .weights import load_model

    dl = options.download
    if options.fidelity is not None and method in ("vspbfr", "compact"):
        log.warning("%s has no fidelity control; --fidelity is ignored", method)
    if method == "compact":
        from .pipelines.compact import load_compact

        return load_compact(options.model, device=device, dtype=options.precision)
    if method == "vspbfr":
        from .pipelines.vspbfr import VSPBFRPipeline

        enc_file, diff_file, rest_file = (_fetch(i, dl) for i in REQUIRED["vspbfr"])
        enc = load_model(enc_file, "vspbfr_e4e_encoder").model
        dec = load_model(enc_file, "stylegan2_generator").model
        diff = load_model(diff_file, "vspbfr_code_diffuser").model
        rest = load_model(rest_file, "vspbfr_restoration_net").model
        return VSPBFRPipeline(enc, dec, diff, rest, device=device, dtype=options.precision)
    if method == "pltrans":
        from .models.pltrans import DEFAULT_S
        from .pipelines.pltrans import PLTransPipeline

        spec = options.model or _pltrans_file()
        if spec is None:
            raise WeightsError(f"PLTrans has no official weights: train one (trainer/configs/pltrans_*.yaml) and pass "
                               f"--model FILE, or put it in a model folder as {PLTRANS_FILE}.")
        model = load_model(spec, "pltrans", allow_download=False).model
        kwargs = {}
        if options.fidelity is not None:  # more fidelity = a smaller perturbation level n (default 200 at 0.5)
            kwargs["n"] = max(DEFAULT_S + 1, round(400 * (1.0 - options.fidelity)))
        return PLTransPipeline(model, device=device, dtype=options.precision, **kwargs)
    if method == "pgdiff":
        from .pipelines import pgdiff

        unet = load_model(_fetch("difface-ddpm-ffhq512", dl), "adm_unet").model
        rrdb = load_model(_fetch("pgdiff-restorer-rrdb", dl), "pgdiff_rrdb_restorer").model
        # Fidelity scales the guidance: 0.5 gives the released restoration scale 0.1, 0 samples unguided.
        scale = None if options.fidelity is None else 0.2 * options.fidelity
        return pgdiff.PGDiffPipeline(unet, rrdb, device=device, dtype=options.precision, scale=scale)
    raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS[1:])}.")


def load_face_detector(options: RestoreOptions, device: torch.device):
    """The detector for whole photos: ``options.detector``, else the first of :data:`DETECTORS` already present,
    else the MTCNN shipped in ``bfr_core/data`` (no download, so whole photos work offline)."""
    from .faces import load_builtin_detector, load_detector
    from .weights import KNOWN, resolve

    if options.detector:
        spec = options.detector
        path = _fetch(spec, options.download) if spec in KNOWN else resolve(spec, allow_download=False)[0]
        return load_detector(path, device=device)
    for rid in DETECTORS:
        if rid.startswith("retinaface"):
            try:
                import facexlib  # noqa: F401
            except ImportError:
                continue
        path = _present(rid)
        if path is not None:
            log.info("face detector: %s (%s)", rid, path)
            return load_detector(path, device=device)
    log.info("face detector: the built-in MTCNN (put yunet_final.pth in a model folder, or pass --detector yunet, "
             "for a faster one)")
    return load_builtin_detector(device=device)


# ------------------------------------------------------------------------------------------------ running

@dataclass
class Summary:
    """What a run (or one process of it) did."""

    method: str = ""
    reason: str = ""
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # outputs that already existed
    without_faces: list[str] = field(default_factory=list)  # written unchanged: no face found
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, error)
    faces: int = 0

    def merge(self, other: "Summary") -> None:
        self.restored += other.restored
        self.skipped += other.skipped
        self.without_faces += other.without_faces
        self.failed += other.failed
        self.faces += other.faces

    def to_dict(self) -> dict:
        return {"method": self.method, "reason": self.reason, "restored": self.restored, "skipped": self.skipped,
                "without_faces": self.without_faces, "failed": self.failed, "faces": self.faces}

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        return cls(d["method"], d["reason"], list(d["restored"]), list(d["skipped"]), list(d["without_faces"]),
                   [tuple(x) for x in d["failed"]], int(d["faces"]))


class Reporter:
    """Progress callbacks of a run (the CLI draws them with tqdm); the default reports nowhere."""

    def chosen(self, method: str, reason: str) -> None: ...
    def start(self, total: int) -> None: ...
    def item_done(self, item: Item, status: str) -> None: ...
    def steps(self, done: int, total: int, what: str) -> None: ...
    def close(self) -> None: ...


class Job:
    """A loaded restorer (and detector) that turns inputs into outputs, one file at a time."""

    def __init__(self, options: RestoreOptions, device: torch.device, reporter: Reporter | None = None):
        options.check()
        self.options, self.device = options, device
        self.reporter = reporter or Reporter()
        self.method, self.reason = choose_method(options, device)
        self.restorer = build_restorer(self.method, options, device)
        self.detector = None if options.aligned else load_face_detector(options, device)

    # -- one batch of frames ----------------------------------------------------------------------------------

    def _stage(self, what: str):
        """Progress stages for :func:`~bfr_core.faces.restore_detected`: only the restore stage is reported."""
        from .progress import Progress

        def on_progress(done: int, total: int, preview=None) -> None:
            self.reporter.steps(done, total, what)

        return lambda name, total: Progress(total, on_progress if name == "restore" else None)

    def restore_frames(self, frames: torch.Tensor, what: str = "") -> tuple[torch.Tensor, int]:
        """Whole photos or video frames (B, H, W, C) → (restored frames, faces found)."""
        from .faces import detect_faces, restore_detected, select_faces

        o = self.options
        faces = detect_faces(frames, self.detector, max_side=o.detector_size or None, crop_size=int(self.restorer.size),
                             device=self.device)
        faces = select_faces(faces, mode="all", sort_by="area", min_size=o.min_face, max_faces=o.max_faces)
        result, _ = restore_detected(frames, faces, self.restorer, seed=o.seed, batch_size=o.batch_size, upscale=o.upscale,
                                     color_match=o.color_match, visibility=o.visibility, device=self.device,
                                     output_device="cpu", stage=self._stage(what))
        return result.image, len(faces)

    def restore_aligned(self, image: torch.Tensor, what: str = "") -> torch.Tensor:
        """An aligned face crop (1, s, s, C) → the restored crop at the restorer's size (alpha kept, resized)."""
        from .faces import restore_with_backoff
        from .images import fit_square, from_model, merge_alpha, split_alpha, to_model

        rgb, alpha = split_alpha(image)
        crop = fit_square(to_model(rgb), int(self.restorer.size), "aligned face crops (--aligned)").clamp(-1, 1)
        progress = self._stage(what)("restore", 1)
        out = restore_with_backoff(self.restorer, crop, self.options.seed, self.options.batch_size, progress.on_progress)
        if self.options.visibility < 1.0:
            out = torch.lerp(crop, out.to(crop), self.options.visibility)
        return merge_alpha(from_model(out), alpha)

    # -- files ------------------------------------------------------------------------------------------------

    def image(self, item: Item) -> tuple[str, int]:
        image = load_image(item.source, keep_alpha=True)
        if self.options.aligned:
            out, n = self.restore_aligned(image, item.source.name), 1
        else:
            out, n = self.restore_frames(image, item.source.name)
        if out.shape[-1] == 4 and item.target.suffix.lower() in (".jpg", ".jpeg"):
            log.warning("%s: JPEG has no alpha channel; the transparency is dropped", item.target.name)
            out = out[..., :3]
        save_image(out, item.target, overwrite=self.options.overwrite)
        return ("restored" if n else "no face"), n

    def video(self, item: Item) -> tuple[str, int]:
        from .videoio import VideoReader, VideoWriter

        o = self.options
        if o.aligned:
            raise InputError(f"{item.source.name}: --aligned takes face-crop images, not videos.")
        faces_total, frames_done = 0, 0
        with VideoReader(item.source) as reader:
            total = reader.frame_count
            w = round(reader.width * o.upscale) if o.upscale != 1 else reader.width
            h = round(reader.height * o.upscale) if o.upscale != 1 else reader.height
            if not reader.has_audio:
                log.info("%s has no audio stream", item.source.name)
            writer = VideoWriter(item.target, reader.fps, w, h, source=item.source)
            try:
                for chunk in reader.chunks(o.video_chunk):
                    out, n = self.restore_frames(chunk, f"{item.source.name} frames {frames_done}+")
                    writer.write(out)
                    faces_total += n
                    frames_done += chunk.shape[0]
                    self.reporter.steps(frames_done, max(total, frames_done), f"{item.source.name} (frames)")
                writer.close()
            except BaseException:
                writer.abort()
                raise
        return ("restored" if faces_total else "no face"), faces_total

    def run(self, items: list[Item], summary: Summary | None = None) -> Summary:
        """Restore ``items`` in order, skipping finished outputs; a failing file is reported and the run goes on."""
        summary = summary or Summary(self.method, self.reason)
        self.reporter.start(len(items))
        for item in items:
            name = str(item.source)
            if item.target.exists() and not self.options.overwrite:
                summary.skipped.append(name)
                self.reporter.item_done(item, "skipped")
                continue
            try:
                status, n = self.video(item) if item.kind == "video" else self.image(item)
            except BFRError as e:
                log.error("%s: %s", item.source, e)
                summary.failed.append((name, str(e)))
                self.reporter.item_done(item, "failed")
                continue
            summary.faces += n
            (summary.restored if status == "restored" else summary.without_faces).append(name)
            if status == "no face":
                log.warning("%s: no face found; written unchanged", item.source)
            self.reporter.item_done(item, status)
        self.reporter.close()
        return summary


def _distributed(options: RestoreOptions):
    """accelerate's PartialState when this is one of several processes (accelerate launch, torchrun), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    try:
        from accelerate import PartialState
    except ImportError as e:
        raise InputError("several processes need the accelerate package to share the work: pip install accelerate") from e
    return PartialState(cpu=options.device == "cpu")


def run(inputs: list[str | os.PathLike], out_dir: str | os.PathLike, options: RestoreOptions,
        reporter: Reporter | None = None) -> Summary:
    """Restore every image and video among ``inputs`` into ``out_dir``; returns what was done (all processes).

    With several processes, process k of n restores items k, k + n, k + 2n … of the sorted list; the
    returned summary gathers every process's part.
    """
    from .device import resolve_device

    options.check()
    items = plan(inputs, out_dir, options)
    if not items:
        raise InputError("no images or videos found in the inputs.")
    if not options.overwrite and all(item.target.exists() for item in items):
        # Every output is there (a finished run started again): say so without loading or downloading a model.
        summary = Summary("none", "every output already exists (overwrite restores them again)")
        summary.skipped = [str(item.source) for item in items]
        log.info("all %d outputs in %s already exist; nothing to do", len(items), out_dir)
        return summary
    state = _distributed(options)
    if state is None:
        device = resolve_device(options.device)
        mine = items
    else:
        device = state.device
        mine = items[state.process_index::state.num_processes]
        log.info("process %d of %d on %s: %d of %d files", state.process_index, state.num_processes, device,
                 len(mine), len(items))
    reporter = reporter or Reporter()
    # The main process chooses (and downloads) first, so that the others find the files present.
    with state.main_process_first() if state is not None else contextlib.nullcontext():
        job = Job(options, device, reporter)
    if state is None or state.is_main_process:
        reporter.chosen(job.method, job.reason)
    summary = job.run(mine)
    if state is None:
        return summary
    from accelerate.utils import gather_object

    total = Summary(job.method, job.reason)
    try:
        for part in gather_object([summary.to_dict()]):
            total.merge(Summary.from_dict(part))
    finally:
        # Tear the process group down here: left to interpreter exit, gloo's threads can abort the process.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return total

"""Helpers shared by the node families: weight choices, custom wire types, crops in and out."""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Sequence, TypeVar

import torch

from bfr_core import images
from bfr_core.device import DTYPE_CHOICES
from bfr_core.weights import KNOWN, LoadedModel, load_model

from . import _comfy
from ._comfy import io

log = logging.getLogger("bfr")

# Custom wire types, declared once.
VSPBFR = io.Custom("BFR_VSPBFR")
WPLUS = io.Custom("BFR_WPLUS")
FEATURE_BANK = io.Custom("BFR_FEATURE_BANK")
PLTRANS = io.Custom("BFR_PLTRANS")
FACE_DETECTOR = io.Custom("BFR_FACE_DETECTOR")
FACES = io.Custom("BFR_FACES")
FACE_PARSER = io.Custom("BFR_FACE_PARSER")
PGDIFF_PRIOR = io.Custom("BFR_PGDIFF_PRIOR")  # DifFace's DDPM (a prior-only PGDiffPipeline)
PGDIFF_RESTORER = io.Custom("BFR_PGDIFF_RESTORER")  # PGDiff's RRDB restorer module
ARCFACE = io.Custom("BFR_ARCFACE")  # insightface ArcFace module
GUIDANCE = io.Custom("BFR_PGDIFF_GUIDANCE")  # a bfr_core CompositeGuidance (terms + update rule)
PGDIFF = io.Custom("BFR_PGDIFF")  # a configured PGDiffPipeline, for Restore Faces
COMPACT = io.Custom("BFR_COMPACT")  # the built-in compact restorer (a CompactPipeline)

#: The restorer loaders' outputs (each a bfr_core FaceRestorer); Restore Faces accepts any of them.
FACE_RESTORERS = [VSPBFR, PLTRANS, PGDIFF, COMPACT]

PRECISION_INPUT_TOOLTIP = "auto: bf16 on a CUDA GPU, fp32 on the CPU."


def precision_input() -> io.Combo.Input:
    return io.Combo.Input("precision", options=list(DTYPE_CHOICES), default="auto", tooltip=PRECISION_INPUT_TOOLTIP)


def weight_choices(registry_ids: Sequence[str]) -> list[str]:
    """Combo options: the known checkpoints (downloaded on first use), then files in the model folders."""
    known = [f"{rid} (auto-download)" for rid in registry_ids]
    return known + [f for f in _comfy.model_files() if f not in {KNOWN[r].filename for r in registry_ids}]


def _choice_spec(choice: str) -> str:
    """What a weight combo choice names: a registry id, or the path of a file in a models folder."""
    spec = choice.removesuffix(" (auto-download)")
    return spec if spec in KNOWN else (_comfy.model_path(spec) or spec)


def load_choice(choice: str, architecture: str) -> LoadedModel:
    """Load what a weight combo names: a registry id (found or downloaded into models/bfr) or a file."""
    spec = _choice_spec(choice)
    # Not cached in the core: the loader nodes keep what they built, so replacing it frees the old weights.
    loaded = load_model(spec, architecture, dest_dir=_comfy.download_dir(), cache=False)
    log.info("BFR: %s", loaded.licence_notice)
    return loaded


def file_key(path: str | os.PathLike) -> tuple:
    """Cache key of a weights file: its path plus size and modification time, so a file replaced under the same
    name is loaded again instead of serving the old weights from a node's cache."""
    try:
        st = os.stat(path)
    except OSError:
        return (str(path),)
    return (str(path), st.st_size, st.st_mtime_ns)


def choice_key(choice: str) -> tuple:
    """Cache key of a weight combo choice: :func:`file_key` of the file it names when that is a local file."""
    spec = _choice_spec(choice)
    return (choice,) if spec in KNOWN else (choice, *file_key(spec))


T = TypeVar("T")
_resident_lock = threading.Lock()


def resident(cache: dict[str, tuple[tuple, object]], kind: str, key: tuple, build: Callable[[], T]) -> T:
    """What the loader nodes keep loaded: one object per ``kind`` in ``cache``, built by ``build``.

    The same ``key`` returns the kept object. Another key builds a new one and frees the old. Keys are made
    with :func:`choice_key` / :func:`file_key`, so a weights file replaced under the same name is loaded again.
    """
    with _resident_lock:
        hit = cache.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]  # type: ignore[return-value]
    value = build()
    with _resident_lock:
        cache[kind] = (key, value)
    return value


def crops_to_model(image: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IMAGE of aligned crops → (B, 3, size, size) in [-1, 1] on the CPU, plus the alpha channel if any."""
    rgb, alpha = images.split_alpha(image)
    x = images.fit_square(images.to_model(rgb), size)
    return x, alpha


def model_to_crops(x: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """Model output → IMAGE on ComfyUI's intermediate device, alpha re-attached (resized if needed)."""
    return images.merge_alpha(images.from_model(x, _comfy.output_device()), alpha)

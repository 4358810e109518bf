"""The one path every checkpoint takes: resolve → read safely → convert once → detect → build → strict load."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from . import architectures as archs
from .fetch import ByteProgress, bfr_home, resolve, verify
from .files import PICKLE_SUFFIXES, Checkpoint, load_checkpoint, load_safetensors_checkpoint, save_checkpoint
from .registry import KnownCheckpoint

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model built from a checkpoint, with where it came from and its licence."""

    model: nn.Module
    architecture: str
    config: Any
    path: Path
    entry: KnownCheckpoint | None
    report: archs.LoadReport

    @property
    def licence_notice(self) -> str:
        return self.entry.licence_notice() if self.entry else f"{self.path.name}: licence unknown (a local file)."


def open_checkpoint(path: str | os.PathLike, *, convert: bool = True) -> Checkpoint:
    """Read a checkpoint file; official pickles are converted once to safetensors in ``$BFR_HOME/converted``.

    The converted copy is keyed by the original's sha256, so a replaced file is converted again.
    """
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES or not convert:
        return load_checkpoint(path)
    digest = verify(path, None)
    converted = bfr_home() / "converted" / f"{path.stem}-{digest[:16]}.safetensors"
    if converted.is_file():
        try:
            ckpt = load_safetensors_checkpoint(converted)
            ckpt.path = path
            return ckpt
        except WeightsError:
            log.warning("converted copy %s is unreadable; converting %s again", converted, path.name)
    ckpt = load_checkpoint(path)
    meta = dict(ckpt.meta, converted_from=path.name, source_sha256=digest)
    try:
        save_checkpoint(ckpt.tensors, converted, meta)
        log.info("converted %s to %s", path.name, converted)
    except OSError as e:  # a read-only cache must not stop the load
        log.warning("could not write the converted copy %s: %s", converted, e)
    return ckpt


def inspect_checkpoint(spec: str | os.PathLike, *, allow_download: bool = False) -> dict[str, Any]:
    """What a checkpoint is: its file, registry entry, licence, detected architectures and sizes."""
    path, entry = resolve(spec, allow_download=allow_download)
    ckpt = open_checkpoint(path, convert=False)
    found = []
    for m in archs.detect(ckpt):
        sd = m.state_dict(ckpt)
        found.append({
            "architecture": m.arch.name,
            "title": m.arch.title,
            "prefix": m.prefix,
            "tensors": len(sd),
            "parameters": int(sum(v.numel() for v in sd.values() if v.is_floating_point())),
        })
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "registry_id": entry.id if entry else None,
        "licence": entry.licence_notice() if entry else "unknown (not a registry checkpoint)",
        "architectures": found,
        "tensors": len(ckpt.tensors),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in ckpt.tensors.values()}),
        "meta_keys": sorted(ckpt.meta),
    }


_cache: dict[tuple, LoadedModel] = {}
_cache_lock = threading.Lock()


def load_model(spec: str | os.PathLike, architecture: str | None = None, *, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None, strict: bool = True, allow_download: bool = True,
               dest_dir: str | os.PathLike | None = None, progress: ByteProgress | None = None,
               cache: bool = True) -> LoadedModel:
    """Load one model from a checkpoint (path, registry id, model-folder file name or ``hf://`` URI).

    ``architecture`` picks one model when a file holds several (``style_encoder_decoder.pt`` holds the
    e4e encoder and the StyleGAN2 decoder); without it the file must hold exactly one known architecture.
    Loaded models are cached by (file version, architecture, device, dtype) so graphs reuse them.
    """
    path, entry = resolve(spec, allow_download=allow_download, dest_dir=dest_dir, progress=progress)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, architecture, str(torch.device(device)), str(dtype), strict)
    if cache:
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
    ckpt = open_checkpoint(path)
    matches = archs.detect(ckpt, only=architecture)
    if entry is not None and architecture is None:
        matches = [m for m in matches if m.arch.name in entry.architectures] or matches
    names = sorted({m.arch.name for m in matches})
    if not matches:
        wanted = f"a {architecture} model" if architecture else "any known architecture"
        others = sorted({m.arch.name for m in archs.detect(ckpt)})
        hint = f" It holds: {', '.join(others)}." if others else " `bfr info FILE` lists its keys."
        raise WeightsError(f"{path.name} does not contain {wanted}.{hint}")
    if len(names) > 1:
        raise WeightsError(f"{path.name} holds several models ({', '.join(names)}); say which one with architecture=...")
    match = matches[0]
    model, report = archs.build(match, ckpt, strict=strict, device=device, dtype=dtype)
    config = getattr(model, "config", None)
    loaded = LoadedModel(model, match.arch.name, config, path, entry, report)
    if entry is not None:
        log.info("loaded %s from %s. Licence: %s", match.arch.name, path.name, entry.licence_notice())
    if cache:
        with _cache_lock:
            _cache[key] = loaded
    return loaded


def unload_all() -> int:
    """Forget every cached model (ComfyUI's 'free memory' and tests call this). Returns how many."""
    with _cache_lock:
        n = len(_cache)
        _cache.clear()
    return n


def save_model(model: nn.Module, path: str | os.PathLike, architecture: str, meta: dict[str, Any] | None = None) -> Path:
    """Save our own model as safetensors with its architecture and config, so it loads with no guessing."""
    archs.get(architecture)  # fail early on a typo
    config = getattr(model, "config", None)
    if config is None:
        raise WeightsError(f"{type(model).__name__} has no .config dataclass; it cannot be saved with save_model.")
    full_meta = dict(meta or {}, bfr_arch=architecture, bfr_config=archs.config_to_dict(config))
    return save_checkpoint(model.state_dict(), path, full_meta)

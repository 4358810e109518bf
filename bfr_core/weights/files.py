"""Reading and writing checkpoint files safely.

Everything we write is safetensors. Official ``.pt``/``.pth`` files are read only through
``torch.load(weights_only=True)`` with an explicit allow-list of the few non-tensor types official
checkpoints hold; a file that asks for anything else (for example ``os.system``, the usual way a
malicious pickle runs code) is refused before a single object of it is built.

A loaded file becomes a :class:`Checkpoint`: its tensors flattened to dotted keys that keep the file's
nesting (``g_ema.conv1.weight``, ``state_dict.encoder.input_layer.0.weight``, ``latent_avg``) plus the
JSON-able non-tensor leaves (``opts``, ``args``, ``iter``) as metadata. Optimiser states are dropped: they
are never needed for inference and can be larger than the weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import UnsafeCheckpointError, WeightsError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".tar")

#: Top-level entries of training checkpoints that hold optimiser state; dropped on load.
TRAINING_ONLY_KEYS = frozenset({
    "optimizer", "optimizers", "optim", "g_optim", "d_optim", "mapper_optim", "lr_scheduler", "scheduler", "scaler",
})


def _allowed_globals() -> list:
    """Non-tensor types that official checkpoints of the supported methods contain.

    ``argparse.Namespace``: the ``args`` entry of VSPBFR's training checkpoints. NumPy scalars and dtypes:
    metrics such as ``best_fid`` saved as ``numpy.float64``. Nothing here can execute code when rebuilt.
    """
    allowed: list = [argparse.Namespace]
    try:
        import numpy as np

        try:
            from numpy._core.multiarray import scalar  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import scalar  # type: ignore[no-redef]
        allowed += [scalar, np.dtype]
        allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return allowed


@dataclass
class Checkpoint:
    """The tensors of one checkpoint file, flattened to dotted keys, and its non-tensor metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def sub(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix`` (e.g. ``"g_ema."``) with the prefix removed."""
        if not prefix:
            return dict(self.tensors)
        n = len(prefix)
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def _flatten(obj: Any, prefix: str, tensors: dict, meta: dict) -> None:
    if isinstance(obj, torch.Tensor):
        tensors[prefix[:-1]] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            if not prefix and str(k) in TRAINING_ONLY_KEYS:
                continue
            _flatten(v, f"{prefix}{k}.", tensors, meta)
    elif isinstance(obj, argparse.Namespace):
        _flatten(vars(obj), prefix, tensors, meta)
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(v, torch.Tensor) for v in obj):
        for i, v in enumerate(obj):
            tensors[f"{prefix}{i}"] = v
    else:
        meta[prefix[:-1]] = _jsonable(obj)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    return repr(obj)


def flatten_checkpoint(obj: Any, path: Path | None = None) -> Checkpoint:
    """Turn a loaded (possibly nested) checkpoint object into a :class:`Checkpoint`."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    _flatten(obj, "", tensors, meta)
    if not tensors:
        raise WeightsError(f"{path or 'checkpoint'} holds no tensors; it is not a model checkpoint.")
    return Checkpoint(tensors, meta, path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise WeightsError(
            f"checkpoint file not found: {path}. Check the path, or use a registry id (`bfr info --list`) so it is downloaded."
        )
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; pass the checkpoint file inside it.")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes): the download or copy failed. Delete it and fetch it again.")


def load_pickle_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with our allow-list, mapping failures to clear errors."""
    path = Path(path)
    _check_file(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        what = f" It asks for {', '.join(unsafe)}." if unsafe else ""
        raise UnsafeCheckpointError(
            f"refused to load {path.name}: it is a pickle that needs types outside the allow-list of safe types.{what} "
            "Loading it could run code on this machine. Get the checkpoint from its official source, or a .safetensors copy; "
            "if you made this file yourself, re-save it with `safetensors.torch.save_file`."
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WeightsError(
            f"{path} could not be read as a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "The file is truncated or corrupt: delete it and download it again."
        ) from e


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _unsafe_globals(path: Path) -> list[str]:
    try:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in _allowed_globals()}
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in allowed]
    except Exception:  # the file may be a legacy (non-zip) pickle: the loader's own message is enough
        return []


def load_safetensors_checkpoint(path: str | os.PathLike, device: str = "cpu") -> Checkpoint:
    """Read a safetensors file written by anyone; metadata written by :func:`save_checkpoint` is restored."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({e}). It is truncated or corrupt: delete it and fetch it again."
        ) from e
    meta: dict[str, Any] = {}
    if "bfr_meta" in raw_meta:
        meta = json.loads(raw_meta["bfr_meta"])
    else:
        meta = dict(raw_meta)
    return Checkpoint(tensors, meta, path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load any supported checkpoint file safely into a :class:`Checkpoint` (on the CPU)."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return load_safetensors_checkpoint(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return flatten_checkpoint(load_pickle_checkpoint(path), path)
    _check_file(path)
    raise WeightsError(
        f"{path.name}: unsupported checkpoint format {path.suffix!r}; use .safetensors, or an official .pt/.pth/.ckpt/.bin file."
    )


def save_checkpoint(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Write tensors (+ JSON metadata) as safetensors atomically: a crash never leaves a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage; clone keeps the file self-contained.
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {"bfr_meta": json.dumps(dict(meta or {}), sort_keys=True, default=repr)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(data, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Convert an official pickle checkpoint to safetensors once (dropping optimiser states)."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise WeightsError(f"refusing to convert {src} onto itself; choose another output path.")
    if dst.exists() and not overwrite:
        raise WeightsError(f"{dst} already exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    ckpt = load_checkpoint(src)
    meta = dict(ckpt.meta)
    meta.setdefault("converted_from", src.name)
    return save_checkpoint(ckpt.tensors, dst, meta)

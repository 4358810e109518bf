"""Finding and downloading checkpoint files: local paths, model folders, the Hugging Face Hub, URLs.

Hub files go through ``huggingface_hub.hf_hub_download`` (its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``,
resumable downloads); other URLs through a small streaming downloader of ours (huggingface_hub only speaks
to Hub endpoints). Every file whose sha256 is known, from the registry or pinned at first download in the
lock file, is verified before use, and a file that fails the check is removed from the cache so the next
attempt downloads it again instead of failing forever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DownloadError, WeightsError
from .registry import HubSource, KnownCheckpoint, PackagedSource, UrlSource, find_by_filename, known, KNOWN

log = logging.getLogger(__name__)

ByteProgress = Callable[[int, int], None]  # (bytes done, bytes total or 0 if unknown)

_search_dirs: list[Path] = []
_lock = threading.Lock()


def bfr_home() -> Path:
    """Our cache folder: ``$BFR_HOME``, else ``$XDG_CACHE_HOME/bfr``, else ``~/.cache/bfr``."""
    if os.environ.get("BFR_HOME"):
        return Path(os.environ["BFR_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bfr"


def add_search_dir(path: str | os.PathLike) -> None:
    """Also look for checkpoint files in ``path`` (ComfyUI registers its model folders here)."""
    p = Path(path).expanduser()
    if p not in _search_dirs:
        _search_dirs.append(p)


def search_dirs() -> list[Path]:
    """Folders searched for checkpoint files, in order: ``$BFR_MODELS_DIR`` entries, then registered ones."""
    env = [Path(p).expanduser() for p in os.environ.get("BFR_MODELS_DIR", "").split(os.pathsep) if p]
    return env + list(_search_dirs)


def find_local(filename: str, dirs: Iterable[Path] | None = None) -> Path | None:
    """The first ``filename`` found directly in (or one level below) the search folders."""
    for d in (search_dirs() if dirs is None else dirs):
        for cand in (d / filename, *(d.glob(f"*/{filename}") if d.is_dir() else ())):
            if cand.is_file():
                return cand
    return None


def offline() -> bool:
    """``HF_HUB_OFFLINE`` read now, not at import, so a caller can switch it at run time."""
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().upper() in {"1", "ON", "YES", "TRUE"}


# ----------------------------------------------------------------------------------------- hashing / lock

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _lock_path() -> Path:
    return bfr_home() / "weights.lock.json"


def _read_lock() -> dict:
    try:
        return json.loads(_lock_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_lock(data: dict) -> None:
    path = _lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lock.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def expected_sha256(entry: KnownCheckpoint) -> str | None:
    """The registry's hash, else the one pinned at first download."""
    return entry.sha256 or _read_lock().get("pins", {}).get(entry.id, {}).get("sha256")


def verify(path: Path, entry: KnownCheckpoint | None, *, remove_bad: bool = False, pin: bool = False) -> str:
    """Check ``path`` against the expected sha256 (computed once per file version, then remembered).

    ``pin`` records the hash of a file just downloaded from the entry's source when the registry has none
    (trust on first download). A file a user placed by hand is checked against a known hash but never pinned:
    it may be another release of the same network, and must not make the official file fail later.
    """
    st = path.stat()
    stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    with _lock:
        lock = _read_lock()
        digest = lock.get("hashes", {}).get(stamp)
    if digest is None:
        digest = sha256_file(path)
    want = expected_sha256(entry) if entry else None
    if want and digest != want:
        where = f"{path}"
        if remove_bad:
            _remove_cached(path)
            where += " (removed from the cache)"
        raise DownloadError(
            f"{entry.id if entry else path.name}: sha256 mismatch for {where}: expected {want}, got {digest}. "
            "The file is corrupt, truncated or a different version; download it again"
            + (" (it was removed, so the next run fetches it anew)." if remove_bad else f", or delete {path} and retry.")
        )
    with _lock:
        lock = _read_lock()
        lock.setdefault("hashes", {})[stamp] = digest
        if entry and not want and pin:
            lock.setdefault("pins", {})[entry.id] = {"sha256": digest, "size": st.st_size}
            log.info("pinned %s at sha256 %s (first use)", entry.id, digest)
        _write_lock(lock)
    return digest


def _remove_cached(path: Path) -> None:
    """Remove a bad downloaded file, including the Hub cache's blob behind a snapshot symlink."""
    target = path.resolve()
    for p in {path, target}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------------------- downloads

class _CallbackTqdm:
    """A tqdm class that forwards byte counts to a plain callback (for ComfyUI's progress bar)."""

    @staticmethod
    def make(callback: ByteProgress):
        from tqdm.auto import tqdm

        class Forward(tqdm):
            def update(self, n=1):
                out = super().update(n)
                callback(int(self.n), int(self.total or 0))
                return out

        return Forward


def _hub_download(src: HubSource, entry_id: str, dest_dir: Path | None, progress: ByteProgress | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hf_errors

    kwargs = dict(
        repo_id=src.repo_id, filename=src.filename, repo_type=src.repo_type, revision=src.revision,
        endpoint=os.environ.get("HF_ENDPOINT") or None, local_files_only=offline(), cache_dir=_hf_cache_dir(),
    )
    if dest_dir is not None:
        kwargs["local_dir"] = str(dest_dir)
    if progress is not None:
        kwargs["tqdm_class"] = _CallbackTqdm.make(progress)
    where = src.describe()
    try:
        return Path(hf_hub_download(**kwargs))
    except hf_errors.LocalEntryNotFoundError as e:
        raise DownloadError(
            f"{entry_id}: {src.filename} is not in the local Hugging Face cache and downloading is off "
            f"(HF_HUB_OFFLINE=1, or the Hub could not be reached). Download it where there is internet "
            f"(`bfr download {entry_id}`), or place the file in a model folder ({_folders_hint()})."
        ) from e
    except hf_errors.RepositoryNotFoundError as e:
        raise DownloadError(f"{entry_id}: the Hub repository {src.repo_id} ({src.repo_type}) was not found or is private: {where}.") from e
    except hf_errors.RevisionNotFoundError as e:
        raise DownloadError(f"{entry_id}: revision {src.revision} of {src.repo_id} does not exist on the Hub.") from e
    except hf_errors.EntryNotFoundError as e:
        raise DownloadError(f"{entry_id}: {src.filename} is missing from {src.repo_id}@{src.revision or 'main'} on the Hub ({where}).") from e
    except (hf_errors.HfHubHTTPError, OSError, ValueError) as e:
        raise DownloadError(f"{entry_id}: download from {where} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


def _hf_cache_dir() -> str | None:
    """The Hub cache as the environment says now (huggingface_hub reads it only once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _url_download(src: UrlSource, entry: KnownCheckpoint, dest_dir: Path, progress: ByteProgress | None, timeout: float = 30.0) -> Path:
    if offline():
        raise DownloadError(
            f"{entry.id}: {entry.filename} is not present and downloads are off (HF_HUB_OFFLINE=1). "
            f"Download it from {src.url} and place it in a model folder ({_folders_hint()})."
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / entry.filename
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{entry.filename}.", suffix=".part")
    try:
        req = urllib.request.Request(src.url, headers={"User-Agent": "bfr-suite"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while block := resp.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
        if total and done != total:
            raise DownloadError(f"{entry.id}: download from {src.url} was cut off at {done} of {total} bytes; run again to retry.")
        if entry.size and done != entry.size:
            raise DownloadError(f"{entry.id}: downloaded {done} bytes from {src.url}, expected {entry.size}; the source changed or the transfer broke.")
        os.replace(tmp, final)
        return final
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{entry.id}: {src.url} answered HTTP {e.code} ({e.reason}).") from e
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise DownloadError(f"{entry.id}: could not download {src.url}: {getattr(e, 'reason', e)}.") from e
    except Exception as e:  # a truncated body (http.client.IncompleteRead) and other transfer errors
        if isinstance(e, DownloadError):
            raise
        raise DownloadError(f"{entry.id}: download from {src.url} failed: {type(e).__name__}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _folders_hint() -> str:
    dirs = search_dirs()
    return ", ".join(str(d) for d in dirs) if dirs else "set BFR_MODELS_DIR, or pass the file path"


def _packaged(entry: KnownCheckpoint) -> Path | None:
    """The copy of ``entry`` shipped in ``bfr_core/data``, if it has one and this install holds it."""
    for src in entry.sources:
        if isinstance(src, PackagedSource) and src.path().is_file():
            return src.path()
    return None


def download(entry: KnownCheckpoint | str, *, dest_dir: str | os.PathLike | None = None,
             progress: ByteProgress | None = None) -> Path:
    """Download a registry checkpoint (or find it in the cache) and verify it. Sources are tried in order."""
    entry = known(entry) if isinstance(entry, str) else entry
    errors: list[str] = []
    for src in entry.sources:
        if isinstance(src, PackagedSource):  # checked, never removed: it belongs to the install, not the cache
            if src.path().is_file():
                verify(src.path(), entry)
                return src.path()
            errors.append(f"{entry.id}: {src.describe()} is missing from this install; reinstall the package.")
            continue
        try:
            if isinstance(src, HubSource):
                path = _hub_download(src, entry.id, Path(dest_dir) if dest_dir else None, progress)
            else:
                path = find_local(entry.filename, [Path(dest_dir) if dest_dir else bfr_home() / "downloads"])
                if path is None:
                    path = _url_download(src, entry, Path(dest_dir) if dest_dir else bfr_home() / "downloads", progress)
        except DownloadError as e:
            errors.append(str(e))
            log.info("source %s failed: %s", src.describe(), e)
            continue
        verify(path, entry, remove_bad=True, pin=True)
        return path
    raise DownloadError("\n".join(errors) if len(errors) == 1 else
                        f"{entry.id}: every source failed:\n- " + "\n- ".join(errors))


def resolve(spec: str | os.PathLike, *, allow_download: bool = True, dest_dir: str | os.PathLike | None = None,
            progress: ByteProgress | None = None) -> tuple[Path, KnownCheckpoint | None]:
    """Turn what a user gave (a path, a registry id, a file name in a model folder, or
    ``hf://owner/repo/path/file[@revision]``) into a verified local file."""
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    if path.is_file():
        entry = find_by_filename(path.name)
        if entry is not None and expected_sha256(entry):
            verify(path, entry)
        return path, entry
    if spec_str.startswith("hf://"):
        return _resolve_hf_uri(spec_str, dest_dir, progress), None
    entry = KNOWN.get(spec_str) or find_by_filename(path.name)
    if entry is not None:
        local = _packaged(entry) or find_local(entry.filename)
        if local is not None:
            verify(local, entry)
            return local, entry
        if not allow_download:
            raise WeightsError(
                f"{entry.id} ({entry.filename}) is not in any model folder ({_folders_hint()}) and downloading is disabled. "
                f"Get it from {entry.sources[0].describe()}."
            )
        return download(entry, dest_dir=dest_dir, progress=progress), entry
    local = find_local(path.name)
    if local is not None:
        return local, None
    if any(sep in spec_str for sep in ("/", os.sep)) or path.suffix:
        raise WeightsError(f"checkpoint file not found: {path}. Check the path (or put the file in a model folder: {_folders_hint()}).")
    raise WeightsError(f"{spec_str!r} is neither a file nor a known checkpoint id. Known ids: {', '.join(sorted(KNOWN))}.")


def _resolve_hf_uri(uri: str, dest_dir, progress) -> Path:
    body = uri[len("hf://"):]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
    parts = body.split("/")
    repo_type = "model"
    if parts and parts[0] in ("spaces", "datasets"):
        repo_type = parts.pop(0)[:-1]
    if len(parts) < 3:
        raise WeightsError(f"{uri!r}: expected hf://[spaces/]owner/repo/path/to/file[@revision].")
    src = HubSource("/".join(parts[:2]), "/".join(parts[2:]), revision, repo_type)
    path = _hub_download(src, uri, Path(dest_dir) if dest_dir else None, progress)
    return path

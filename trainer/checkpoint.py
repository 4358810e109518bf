"""Training states that survive crashes: written to a temporary folder, then renamed into place.

A state is a folder ``checkpoints/step-XXXXXXXX`` holding Accelerate's ``save_state`` files (model,
optimiser, scheduler and RNG states), the EMA weights (safetensors) and ``trainer_state.json``. It is
assembled as ``.tmp-step-XXXXXXXX``, every file is flushed to disk, a ``COMPLETE`` marker is written
and only then is the folder renamed (an atomic operation). A crash or kill at any moment therefore
leaves either the new complete state or none; the previous states are never touched until a newer one
is complete, and leftovers of an interrupted save are removed on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

STATE_RE = re.compile(r"^step-(\d{8,})$")
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


def state_name(step: int) -> str:
    return f"step-{step:08d}"


def list_states(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Complete states in ``ckpt_dir``, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = STATE_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file() and (p / TRAINER_STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_state(ckpt_dir: Path) -> Path | None:
    states = list_states(ckpt_dir)
    return states[-1][1] if states else None


def remove_partial(ckpt_dir: Path) -> list[Path]:
    """Delete leftovers of saves that never completed (``.tmp-*`` folders, state folders without marker)."""
    removed = []
    if not ckpt_dir.is_dir():
        return removed
    for p in ckpt_dir.iterdir():
        partial = p.name.startswith(".tmp-") or (STATE_RE.match(p.name) and not (p / COMPLETE).is_file())
        if partial:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.warning("removed %d incomplete checkpoint folder(s) left by an interrupted save: %s",
                    len(removed), ", ".join(p.name for p in removed))
    return removed


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the folders themselves to stable storage."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def usual_mode(path: str | os.PathLike) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the permissions a plain ``open`` would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    usual_mode(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_state(accelerator, ckpt_dir: Path, step: int, write_extra: Callable[[Path], None],
               trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Save a complete training state atomically (call on every process); returns its folder.

    ``write_extra(tmp_dir)`` runs on the main process and adds the trainer's own files (EMA weights).
    """
    final = ckpt_dir / state_name(step)
    tmp = ckpt_dir / f".tmp-{state_name(step)}"
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    if final.exists() and (final / COMPLETE).is_file():
        return final  # this step is already saved (e.g. a signal right after a periodic save)
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_extra(tmp)
        write_json_atomic(tmp / TRAINER_STATE, trainer_state)
        fsync_tree(tmp)
        (tmp / COMPLETE).write_text(f"{step}\n")
        fsync_tree(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # an incomplete folder of the same name from an older crash
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        for _, old in list_states(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved training state %s", final)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))


def resolve_resume(ckpt_dir: Path, resume: str) -> Path | None:
    """The state to resume from for ``checkpoint.resume`` (auto / never / a folder), or None."""
    from .config import ConfigError

    if resume == "auto":
        return latest_state(ckpt_dir)
    if resume == "never":
        if list_states(ckpt_dir):
            raise ConfigError(
                f"{ckpt_dir} already holds training states and checkpoint.resume=never; "
                "use a new output_dir, or checkpoint.resume=auto to continue that run."
            )
        return None
    path = Path(resume)
    if path.is_dir() and (path / COMPLETE).is_file():
        return path
    if path.is_dir() and (latest := latest_state(path)) is not None:
        return latest
    raise ConfigError(f"checkpoint.resume={resume!r}: not a complete training state folder (nor a folder holding some).")

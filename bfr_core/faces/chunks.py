"""Chunked execution with an out-of-memory back-off, and chunk sizes from free device memory."""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

__all__ = ["run_chunked", "chunk_for_memory", "is_oom"]


def is_oom(err: BaseException) -> bool:
    """True for a CUDA (or other accelerator) out-of-memory error."""
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def run_chunked(fn: Callable[[int, int], None], total: int, chunk: int, *, min_chunk: int = 1,
                device: torch.device | str | None = None) -> int:
    """Call ``fn(start, stop)`` over ``range(total)`` in chunks of ``chunk`` items.

    On an out-of-memory error the same chunk is retried at half the size (down to ``min_chunk``, then
    the error is raised), so a video that fits at batch 2 but not 16 still runs. ``fn`` must only commit
    its results after it has succeeded. Returns the chunk size that worked last, for the next call.
    """
    chunk = max(int(chunk), min_chunk, 1)
    start = 0
    while start < total:
        stop = min(total, start + chunk)
        try:
            fn(start, stop)
        except Exception as err:  # noqa: BLE001 - only OOM is handled, everything else is re-raised
            if not is_oom(err) or chunk <= min_chunk:
                raise
            chunk = max(min_chunk, chunk // 2)
            del err
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory: retrying with chunks of %d", chunk)
            continue
        start = stop
    return chunk


def chunk_for_memory(bytes_per_item: float, device: torch.device | str, *, fraction: float = 0.5,
                     cpu_default: int = 4, limit: int = 64) -> int:
    """How many items fit in ``fraction`` of the free memory of a CUDA ``device`` (``cpu_default`` elsewhere)."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_default
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(limit, free * fraction // max(bytes_per_item, 1))))

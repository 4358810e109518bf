"""Progress reporting and cancellation for long loops, as plain callbacks.

The core never imports ComfyUI or tqdm here: a caller passes ``on_progress(done, total, preview)`` and
``check_cancel()``; ComfyUI nodes connect them to its ProgressBar and interrupt check, the command line
to a tqdm bar and Ctrl-C. ``check_cancel`` stops the work by raising (any exception it likes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

ProgressFn = Callable[[int, int, Optional[torch.Tensor]], None]
CancelFn = Callable[[], None]


@dataclass
class Progress:
    """Counts steps of one job of known length and forwards them to the callbacks.

    ``preview`` tensors are (B, 3, H, W) in [-1, 1] on the compute device; converting them (a host
    synchronisation) is left to the callback, which may skip it.
    """

    total: int
    on_progress: ProgressFn | None = None
    check_cancel: CancelFn | None = None
    done: int = 0

    def cancel_point(self) -> None:
        """Give the caller a chance to stop the work (raises if it wants to)."""
        if self.check_cancel is not None:
            self.check_cancel()

    def step(self, n: int = 1, preview: torch.Tensor | None = None) -> None:
        """Advance by ``n`` steps, report, then check for cancellation."""
        self.done = min(self.total, self.done + n)
        if self.on_progress is not None:
            self.on_progress(self.done, self.total, preview)
        self.cancel_point()

    def sub(self, total: int) -> "Progress":
        """A child counter sharing the callbacks but not the count (e.g. per-batch chunks)."""
        return Progress(total, self.on_progress, self.check_cancel)


def null_progress(total: int = 1) -> Progress:
    """A Progress that reports nowhere and never cancels."""
    return Progress(total)

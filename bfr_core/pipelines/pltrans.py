"""PLTrans restoration of aligned face crops: encode → regularise the query → prior key/value → cross-attend → decode.

Faces are (B, 3, R, R) in [-1, 1], already aligned (FFHQ crop), R the model's resolution (512 full size).
``n`` (perturbation level), ``s`` (where the reverse chain stops and jumps to û₀) and ``steps`` (reverse steps
between them) are in units of the model's T-step schedule; see :meth:`LatentRegularizer.levels`. Heavier
degradations want a larger ``n`` (paper Fig. 4–5).

Randomness: the regulariser's noise (start, per-step posterior and injection noise) comes from one generator
per face, ``make_generator(seed, device, stream="pltrans/<i>")`` for the face at batch position i, so a face's
result depends only on the seed and its position, not on the chunk size.

Precision: ``dtype`` other than float32 runs E, P, the cross-attention and G under ``torch.autocast``; the
latent regulariser (a small UNet on 16×16 latents, where the DWT injection must stay exact) and the codebook
search always run in float32. Output is float32, not clamped.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from ..device import resolve_device, resolve_dtype
from ..models.pltrans import DEFAULT_N, DEFAULT_S, DEFAULT_STEPS, PLTrans
from ..progress import Progress
from ..seeding import make_generator
from .base import autocast, check_faces

__all__ = ["PLTransPipeline", "STREAM", "face_generators"]

#: Name of the random stream (one sub-stream per face) drawn from the seed.
STREAM = "pltrans"


def face_generators(seed: int, start: int, n: int, device: torch.device) -> list[torch.Generator]:
    """The generators of faces ``start`` … ``start + n − 1`` of a call with ``seed``."""
    return [make_generator(seed, device, stream=f"{STREAM}/{start + i}") for i in range(n)]


class PLTransPipeline:
    """A PLTrans model on one device with the inference procedure of Sec. 3 (built and loaded by the caller)."""

    name = "pltrans"

    def __init__(self, model: PLTrans, *, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = "auto", n: int = DEFAULT_N, s: int = DEFAULT_S,
                 steps: int | None = DEFAULT_STEPS):
        #: Regularisation chain used by :meth:`restore_faces` (perturb to n, reverse to s in ``steps`` evaluations).
        self.n, self.s, self.steps = n, s, steps
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # Weights stay float32: autocast lowers the heavy convolutions, the regulariser keeps full precision.
        self.model = model.to(self.device, torch.float32).eval()
        self.size = model.config.resolution

    def steps_per_chunk(self, n: int = DEFAULT_N, s: int = DEFAULT_S, steps: int | None = DEFAULT_STEPS) -> int:
        """Progress steps of one chunk: encode, each UNet evaluation of the regulariser, decode."""
        reg = self.model.regularizer
        return 2 + (reg.num_evaluations(n, s, steps) if reg is not None else 0)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def _check_faces(self, faces: torch.Tensor) -> torch.Tensor:
        return check_faces(faces, self.size, "PLTrans", self.device)

    @torch.no_grad()
    def restore(self, faces: torch.Tensor, *, n: int = DEFAULT_N, s: int = DEFAULT_S, steps: int | None = DEFAULT_STEPS,
                seed: int = 0, first_index: int = 0, progress: Progress | None = None) -> torch.Tensor:
        """Restore one chunk (B, 3, R, R) → (B, 3, R, R); ``first_index`` is its first face's position in the call."""
        faces = self._check_faces(faces)
        model = self.model
        if model.regularizer is not None:
            model.regularizer.levels(n, s, steps)  # validate before any work
        with self._autocast():
            q = model.encode(faces)
        if progress is not None:
            progress.step()
        gens = face_generators(seed, first_index, faces.shape[0], self.device)
        q_hat = model.query(q.float(), n, s, steps, gens, progress)
        with self._autocast():
            out = model.decode(model.transform(q_hat, model.key_value(q).key_value))
        if progress is not None:
            progress.step(preview=out)
        return out.float()

    def __call__(self, faces: torch.Tensor, *, n: int = DEFAULT_N, s: int = DEFAULT_S, steps: int | None = DEFAULT_STEPS,
                 seed: int = 0, batch_size: int | None = None, on_progress: Callable | None = None,
                 check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """Restore aligned faces (B, 3, R, R) in [-1, 1], ``batch_size`` faces at a time (default: all).

        ``on_progress(done, total, preview)`` is called after every step; ``check_cancel()`` may raise to stop.
        """
        faces = self._check_faces(faces)
        total = faces.shape[0]
        if total == 0:
            return faces.clone()
        chunk = max(1, int(batch_size or total))
        progress = Progress(self.steps_per_chunk(n, s, steps) * -(-total // chunk), on_progress, check_cancel)
        out = [self.restore(faces[lo:hi], n=n, s=s, steps=steps, seed=seed, first_index=lo, progress=progress)
               for lo, hi in _chunks(total, chunk)]
        return torch.cat(out)


    def restore_faces(self, faces: torch.Tensor, seed: int = 0, *, batch_size: int | None = None,
                      on_progress: Callable | None = None, check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """The :class:`~bfr_core.pipelines.base.FaceRestorer` interface, with this pipeline's n, s and steps."""
        return self(faces, n=self.n, s=self.s, steps=self.steps, seed=seed, batch_size=batch_size,
                    on_progress=on_progress, check_cancel=check_cancel)

    def modules(self) -> list[torch.nn.Module]:
        return [self.model]


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)

"""Choosing which detected faces to restore: filters, per-frame ordering, and which of them to keep."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from .container import Faces

__all__ = ["SELECT_MODES", "SORT_KEYS", "select_faces"]

SELECT_MODES = ("all", "largest", "index")
SORT_KEYS = ("none", "area", "x", "y", "score")


def _parse_indices(index: int | str | Sequence[int]) -> list[int]:
    if isinstance(index, int):
        return [index]
    if isinstance(index, str):
        try:
            return [int(p) for p in index.replace(";", ",").split(",") if p.strip()]
        except ValueError:
            raise InputError(f"face index {index!r} is not a comma-separated list of integers such as '0' or '0,2'.") from None
    return [int(i) for i in index]


def select_faces(
    faces: Faces,
    *,
    mode: str = "all",
    index: int | str | Sequence[int] = 0,
    sort_by: str = "none",
    reverse: bool = False,
    min_size: float = 0.0,
    score_threshold: float = 0.0,
    start: int = 0,
    max_faces: int = 0,
) -> Faces:
    """Filter and order faces within each frame, then keep some of them.

    Per frame, in this order: drop faces smaller than ``min_size`` frame pixels (square root of the box
    area) or scoring below ``score_threshold``; order them by ``sort_by`` (``area`` and ``score``
    largest first, ``x`` left to right, ``y`` top to bottom; ``reverse`` flips it; ``none`` keeps the
    detector's order); then ``mode`` ``all`` keeps every face, ``largest`` the largest one, ``index``
    the faces at the given positions (an int, a list, or a string ``"0,2"``; negative counts from the
    end; positions that do not exist in a frame are skipped). Finally ``start`` skips that many faces and
    ``max_faces`` (0 = no limit) caps how many are kept per frame.

    The result stays grouped by frame; the crops must be cut again (or indexed the same way) after selecting.
    """
    if mode not in SELECT_MODES:
        raise InputError(f"unknown face selection {mode!r}; choose one of {', '.join(SELECT_MODES)}.")
    if sort_by not in SORT_KEYS:
        raise InputError(f"unknown face order {sort_by!r}; choose one of {', '.join(SORT_KEYS)}.")
    if start < 0 or max_faces < 0:
        raise InputError("start and max_faces must be ≥ 0 (max_faces 0 means no limit).")
    if len(faces) == 0:
        return faces
    f = faces.to("cpu")  # small metadata: selecting on the host costs nothing and keeps the rules simple
    keep = (f.sizes >= min_size) & (f.scores >= score_threshold)
    idx = torch.nonzero(keep).flatten()
    frame = f.frame[idx]
    if sort_by == "none":
        key = torch.arange(len(idx), dtype=torch.float64)
    elif sort_by == "area":
        key = -(f.sizes[idx].double() ** 2)
    elif sort_by == "score":
        key = -f.scores[idx].double()
    else:
        centre = (f.boxes[idx, :2] + f.boxes[idx, 2:]) / 2
        key = centre[:, 0 if sort_by == "x" else 1].double()
    if reverse:
        key = -key
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(frame[order], stable=True).indices]  # group by frame, keep the key order inside
    idx, frame = idx[order], frame[order]
    # rank of each face within its frame
    first = torch.searchsorted(frame, frame, right=False)
    rank = torch.arange(len(idx)) - first
    count = torch.bincount(frame, minlength=f.num_frames)[frame]
    if mode == "largest":
        by_size = torch.sort(-f.sizes[idx], stable=True).indices
        by_size = by_size[torch.sort(frame[by_size], stable=True).indices]
        head = torch.ones(len(idx), dtype=torch.bool)
        head[1:] = frame[by_size][1:] != frame[by_size][:-1]
        chosen = torch.zeros(len(idx), dtype=torch.bool)
        chosen[by_size[head]] = True
    elif mode == "index":
        wanted = torch.tensor(_parse_indices(index), dtype=torch.long)
        pos = torch.where(wanted[None] < 0, count[:, None] + wanted[None], wanted[None])
        chosen = (rank[:, None] == pos).any(1)
    else:
        chosen = torch.ones(len(idx), dtype=torch.bool)
    idx, frame = idx[chosen], frame[chosen]
    first = torch.searchsorted(frame, frame, right=False)
    rank = torch.arange(len(idx)) - first
    keep_rank = rank >= start
    if max_faces:
        keep_rank &= rank < start + max_faces
    return faces[idx[keep_rank].to(faces.device)]

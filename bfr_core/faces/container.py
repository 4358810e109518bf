"""The ``Faces`` record passed from detection to paste-back (the FACES wire between nodes).

Per face: the frame it came from in the IMAGE batch, its box and five landmarks in that frame's pixel
coordinates, the detector score, and the 2×3 affine that maps frame pixels to aligned-crop pixels (plus
its inverse). Coordinates follow the OpenCV convention: pixel ``(x, y)`` has its centre at integer
``(x, y)``. Faces are always stored grouped by frame in ascending frame order, which is also the order of
the aligned crops in the IMAGE batch that travels beside them.

Only plain tensors and ints live here, so a ``Faces`` can be cached, pickled, moved between devices or
handed from one node to another without dragging a model along.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch

from ..errors import InputError

__all__ = ["Faces"]

_PER_FACE = ("frame", "boxes", "landmarks", "scores", "affine", "inverse")


@dataclass
class Faces:
    """Detected and aligned faces of one IMAGE batch.

    Attributes:
        frame: (N,) int64, index of each face's frame in the IMAGE batch.
        boxes: (N, 4) float32, ``x0, y0, x1, y1`` in frame pixels.
        landmarks: (N, 5, 2) float32: eye, eye, nose, mouth corner, mouth corner, image-left first.
        scores: (N,) float32 detector confidence in [0, 1].
        affine: (N, 2, 3) float32, frame pixels → aligned-crop pixels.
        inverse: (N, 2, 3) float32, aligned-crop pixels → frame pixels.
        height, width: frame size the coordinates refer to (every frame of an IMAGE batch has the same size).
        num_frames: frames in the IMAGE batch the faces were found in (frames without faces included).
        crop_size: side of the square aligned crop the affines map to.
    """

    frame: torch.Tensor
    boxes: torch.Tensor
    landmarks: torch.Tensor
    scores: torch.Tensor
    affine: torch.Tensor
    inverse: torch.Tensor
    height: int
    width: int
    num_frames: int
    crop_size: int = 512

    def __post_init__(self) -> None:
        n = self.frame.shape[0]
        expected = {"frame": (n,), "boxes": (n, 4), "landmarks": (n, 5, 2), "scores": (n,), "affine": (n, 2, 3), "inverse": (n, 2, 3)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise InputError(f"Faces.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape}; the FACES data is corrupt.")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls, height: int, width: int, num_frames: int, crop_size: int = 512, device: torch.device | str = "cpu") -> "Faces":
        """A record with no faces (every frame passes through unchanged at paste time)."""
        z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
        return cls(torch.zeros(0, dtype=torch.long, device=device), z(0, 4), z(0, 5, 2), z(0), z(0, 2, 3), z(0, 2, 3),
                   int(height), int(width), int(num_frames), int(crop_size))

    @classmethod
    def cat(cls, parts: Sequence["Faces"], *, stack_frames: bool = True) -> "Faces":
        """Concatenate records of the same frame size.

        ``stack_frames=True`` treats the parts as consecutive IMAGE batches (video chunks): frame indices
        of later parts are shifted past the earlier ones. ``False`` merges faces of the *same* batch (for
        example two selections), keeping frame indices and re-sorting by frame.
        """
        if not parts:
            raise InputError("Faces.cat needs at least one Faces record.")
        first = parts[0]
        for p in parts[1:]:
            if (p.height, p.width, p.crop_size) != (first.height, first.width, first.crop_size):
                raise InputError(
                    f"cannot concatenate faces of {p.width}×{p.height} frames (crop {p.crop_size}) with faces of "
                    f"{first.width}×{first.height} frames (crop {first.crop_size}); detect them on same-size frames with one crop size."
                )
        offsets, frames = [], 0
        for p in parts:
            offsets.append(frames if stack_frames else 0)
            frames = frames + p.num_frames if stack_frames else max(frames, p.num_frames)
        device = first.frame.device
        out = {name: torch.cat([getattr(p, name).to(device) for p in parts]) for name in _PER_FACE if name != "frame"}
        out["frame"] = torch.cat([p.frame.to(device) + o for p, o in zip(parts, offsets)])
        faces = cls(**out, height=first.height, width=first.width, num_frames=frames, crop_size=first.crop_size)
        return faces if stack_frames else faces.sorted_by_frame()

    # --- indexing -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.frame.shape[0])

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> "Faces":
        """Faces picked by an int, slice, index list/tensor or boolean mask (the frame count is kept)."""
        if isinstance(index, int):
            index = [index]
        if not isinstance(index, slice):
            index = torch.as_tensor(index, device=self.frame.device)
            if index.dtype != torch.bool:
                index = index.long()
                if index.numel() and (index.min() < -len(self) or index.max() >= len(self)):
                    raise InputError(f"face index out of range: there are {len(self)} faces.")
        return replace(self, **{name: getattr(self, name)[index] for name in _PER_FACE})

    def select(self, index: torch.Tensor | Sequence[int]) -> "Faces":
        """Alias of indexing, for readability at call sites."""
        return self[index]

    def sorted_by_frame(self) -> "Faces":
        """The same faces, stably ordered by frame index (the order crops travel in)."""
        order = torch.sort(self.frame, stable=True).indices
        return self[order]

    def for_frames(self, start: int, stop: int) -> "Faces":
        """Faces of frames ``start ≤ f < stop``, with frame indices rebased to start at 0."""
        keep = (self.frame >= start) & (self.frame < stop)
        sub = self[keep]
        return replace(sub, frame=sub.frame - start, num_frames=max(0, min(stop, self.num_frames) - start))

    # --- summaries ----------------------------------------------------------------------------
    def counts_per_frame(self) -> torch.Tensor:
        """(num_frames,) number of faces in each frame."""
        return torch.bincount(self.frame.cpu(), minlength=self.num_frames)[: self.num_frames]

    def frames_without_faces(self) -> list[int]:
        """Indices of frames where no face was kept (the caller decides to warn or to fail)."""
        return torch.nonzero(self.counts_per_frame() == 0).flatten().tolist()

    @property
    def sizes(self) -> torch.Tensor:
        """(N,) face size in frame pixels: the square root of the box area."""
        wh = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp_min(0)
        return (wh[:, 0] * wh[:, 1]).sqrt()

    @property
    def device(self) -> torch.device:
        return self.frame.device

    def to(self, device: torch.device | str) -> "Faces":
        """A copy with every tensor on ``device``."""
        return replace(self, **{name: getattr(self, name).to(device) for name in _PER_FACE})

    def to_dict(self) -> dict:
        """Plain dict of tensors and ints (for saving with safetensors/JSON or crossing process boundaries)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Faces":
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise InputError(f"FACES data is missing {sorted(missing)}; it was not produced by this version of the face nodes.")
        return cls(**{k: data[k] for k in names})

    def describe(self) -> str:
        """One line for logs and node previews."""
        counts = self.counts_per_frame()
        return f"{len(self)} face(s) in {self.num_frames} frame(s) of {self.width}×{self.height}, crop {self.crop_size}, {int((counts == 0).sum())} frame(s) without faces"



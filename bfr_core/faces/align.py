"""Five-point alignment to the FFHQ template and warping between frames and aligned crops, on any device.

The similarity fit and the warps are written here rather than taken from kornia/OpenCV because (a) the
fit must be batched over faces with no host round trip (``cv2.estimateAffinePartial2D`` is one face at a
time on the CPU), and (b) kornia's ``warp_affine`` needs one source image per matrix, which would copy a
whole frame for every face; :func:`sample_frames` lets several faces share one frame instead.

Convention: pixel ``(x, y)`` has its centre at integer ``(x, y)`` (as in OpenCV), so a 2×3 affine ``M``
maps frame pixels to crop pixels and ``grid_sample(..., align_corners=True)`` reproduces ``cv2.warpAffine``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "FFHQ_TEMPLATE_512",
    "template",
    "fit_similarity",
    "invert_affine",
    "compose_affine",
    "scale_affine",
    "apply_affine",
    "affine_grid_pixels",
    "sample_frames",
    "crop_scale",
    "pyramid_level",
]

# Five FFHQ landmarks (eye, eye, nose, mouth corner, mouth corner; image-left first) of a 512×512 aligned
# face: the reference that GFPGAN/CodeFormer-style restorers were trained on.
FFHQ_TEMPLATE_512 = torch.tensor(
    [[192.98138, 239.94708], [318.90277, 240.19360], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]]
)


def template(crop_size: int = 512, device: torch.device | str | None = None) -> torch.Tensor:
    """(5, 2) FFHQ landmark positions for a square crop of side ``crop_size`` (pixel-centre coordinates)."""
    if crop_size < 16:
        raise InputError(f"crop size {crop_size} is too small; use at least 16 (512 is the size restorers expect).")
    k = crop_size / 512.0
    return ((FFHQ_TEMPLATE_512 + 0.5) * k - 0.5).to(device)


def fit_similarity(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` to ``dst``.

    ``src`` (N, K, 2), ``dst`` (K, 2) or (N, K, 2), optional per-point ``weights`` (K,) or (N, K).
    Returns (N, 2, 3). The closed form solves ``[a -b; b a] p + t ≈ q`` exactly in the least-squares sense.
    """
    src = src.float()
    dst = dst.to(src).expand_as(src)
    w = torch.ones(src.shape[:2], device=src.device) if weights is None else weights.to(src).expand(src.shape[:2])
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    ps, pd = src - mu_s[:, None], dst - mu_d[:, None]
    denom = (w * (ps ** 2).sum(-1)).sum(1).clamp_min(1e-12)
    a = (w * (ps[..., 0] * pd[..., 0] + ps[..., 1] * pd[..., 1])).sum(1) / denom
    b = (w * (ps[..., 0] * pd[..., 1] - ps[..., 1] * pd[..., 0])).sum(1) / denom
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (N, 2, 2)
    t = mu_d - (rot @ mu_s[..., None])[..., 0]
    return torch.cat([rot, t[..., None]], dim=-1)


def _to3(m: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0], device=m.device, dtype=m.dtype).expand(*m.shape[:-2], 1, 3)
    return torch.cat([m, bottom], dim=-2)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 2, 3) affines, in closed form (no batched LAPACK call)."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    det = a * e - b * d
    if m.numel() and (det.abs() < 1e-12).any():
        raise InputError("a face affine is singular (zero scale); the FACES data is corrupt, run detection again.")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    row0 = torch.stack([ia, ib, -(ia * c + ib * f)], -1)
    row1 = torch.stack([id_, ie, -(id_ * c + ie * f)], -1)
    return torch.stack([row0, row1], -2)


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """(…, 2, 3) affine for ``x ↦ outer(inner(x))``."""
    return (_to3(outer) @ _to3(inner))[..., :2, :]


def scale_affine(factor_x: float | torch.Tensor, factor_y: float | torch.Tensor | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(2, 3) affine that resizes pixel-centre coordinates by the given factors: ``x' = (x + ½)·k − ½``."""
    ky = factor_x if factor_y is None else factor_y
    kx, ky = float(factor_x), float(ky)
    return torch.tensor([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]], device=device)


def apply_affine(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply (N, 2, 3) affines to (N, K, 2) points."""
    return pts @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


def affine_grid_pixels(dst_to_src: torch.Tensor, out_h: int, out_w: int, src_h: int, src_w: int,
                       offset: torch.Tensor | None = None) -> torch.Tensor:
    """``grid_sample`` grid (N, out_h, out_w, 2) for sampling a src_h×src_w source at ``dst_to_src(p + offset)``.

    ``dst_to_src`` (N, 2, 3) maps destination pixels to source pixels; ``offset`` (N, 2) shifts each
    destination window (used to sample only a face's bounding box of a large frame). Normalised for
    ``align_corners=True``.
    """
    dev = dst_to_src.device
    ys = torch.arange(out_h, device=dev, dtype=torch.float32)
    xs = torch.arange(out_w, device=dev, dtype=torch.float32)
    m = dst_to_src.float()
    if offset is not None:
        # p + offset, folded into the translation
        m = torch.cat([m[:, :, :2], (m[:, :, 2] + (m[:, :, :2] @ offset.float()[..., None])[..., 0])[..., None]], -1)
    norm = torch.tensor([2.0 / max(src_w - 1, 1), 2.0 / max(src_h - 1, 1)], device=dev)
    m = torch.cat([m[:, :, :2] * norm[None, :, None], (m[:, :, 2] * norm - 1.0)[..., None]], -1)
    gx = m[:, None, None, :, 0] * xs[None, None, :, None] + m[:, None, None, :, 1] * ys[None, :, None, None] + m[:, None, None, :, 2]
    return gx  # (N, out_h, out_w, 2)


def sample_frames(frames: torch.Tensor, grids: torch.Tensor, frame_index: torch.Tensor,
                  mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample one window per face from a batch of frames without copying a frame per face.

    ``frames`` (B, C, H, W), ``grids`` (N, h, w, 2) from :func:`affine_grid_pixels`, ``frame_index`` (N,)
    in ``[0, B)``. Faces of one frame are stacked along the grid's height so a single ``grid_sample``
    call serves all of them; frames with fewer faces are padded. Returns (N, C, h, w); outside the frame
    follows ``padding_mode`` (``grid_sample``'s: zeros, border or reflection).
    """
    n, h, w, _ = grids.shape
    b = frames.shape[0]
    if n == 0:
        return frames.new_zeros(0, frames.shape[1], h, w)
    fi = frame_index.to(frames.device).long()
    counts = torch.bincount(fi, minlength=b)
    slots_per_frame = int(counts.max())  # one host sync per call, not per face
    # slot of each face within its frame: position minus the first position of its frame (faces are frame-sorted,
    # but do not rely on it)
    order = torch.sort(fi, stable=True).indices
    sorted_fi = fi[order]
    first = torch.searchsorted(sorted_fi, sorted_fi, right=False)
    slot = torch.empty_like(fi)
    slot[order] = torch.arange(n, device=fi.device) - first
    stacked = grids.new_full((b, slots_per_frame, h, w, 2), 2.0)  # outside [-1, 1]: padded slots sample zeros
    stacked[fi, slot] = grids.to(stacked)
    out = F.grid_sample(frames, stacked.view(b, slots_per_frame * h, w, 2), mode=mode, padding_mode=padding_mode, align_corners=True)
    out = out.view(b, frames.shape[1], slots_per_frame, h, w).permute(0, 2, 1, 3, 4)
    return out[fi, slot]


def crop_scale(affine: torch.Tensor) -> torch.Tensor:
    """(N,) linear scale of each frame→crop affine (crop pixels per frame pixel)."""
    return (affine[:, 0, 0] * affine[:, 1, 1] - affine[:, 0, 1] * affine[:, 1, 0]).abs().sqrt()


def pyramid_level(scale: torch.Tensor, max_level: int = 4) -> torch.Tensor:
    """Pyramid level per face (0 = full size) so that a bilinear warp never shrinks by more than 2×.

    Bilinear sampling at a larger step aliases (moiré on hair, shimmer in video); sampling from a source
    pre-shrunk by ``2**level`` with an antialiased resize avoids it.
    """
    lv = torch.floor(torch.log2(1.0 / scale.clamp_min(1e-6))).clamp(0, max_level)
    return lv.long()


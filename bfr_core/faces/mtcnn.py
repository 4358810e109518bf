"""The MTCNN cascade, batched over frames on the tensor's device.

P-Net runs on an image pyramid (one call per level for all frames); its dense proposals from every level
are thresholded together (one host sync), reduced by NMS per (frame, level) at IoU 0.5 and per frame at
0.7, regressed and squared. R-Net and O-Net see 24×24 and 48×48 crops of all frames' candidates at once,
cut with ``roi_align`` (adaptive sampling, close to area resampling; outside the image is black, as in the
original code's zero padding). O-Net gives the final boxes, landmarks and scores; nested boxes are removed
with the original "Min" NMS (intersection over the smaller box).

Coordinates are continuous pixels (pixel ``i`` spans ``[i, i + 1)``), the convention of the other backends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from ..models.mtcnn import MTCNN

__all__ = ["mtcnn_detect", "pyramid_scales"]


def pyramid_scales(h: int, w: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which a 12-pixel P-Net window covers faces from ``min_face_size`` pixels up to the whole image."""
    scales, s = [], 12.0 / min_face_size
    while min(h, w) * s >= 12:
        scales.append(s)
        s *= factor
    return scales


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] → the networks' (255·x − 127.5) / 128."""
    return x * (255.0 / 128.0) - 127.5 / 128.0


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4) → squares with the same centres and the longer side."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True) / 2
    return torch.cat([centre - half, centre + half], 1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move each corner by its offset times the box width / height."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * wh


def _crops(rgb: torch.Tensor, frame: torch.Tensor, boxes: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    rois = torch.cat([frame[:, None].to(boxes), boxes], 1)
    crops = roi_align(rgb, rois, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return _normalise(crops).to(dtype).contiguous(memory_format=torch.channels_last)  # NHWC: ~2× faster convs on CPU


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, frame: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS with overlap = intersection / smaller area, per frame; indices in descending score order."""
    order = scores.argsort(descending=True)
    b, f = boxes[order], frame[order]
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(-1)
    over = inter / torch.minimum(area[:, None], area[None, :]).clamp_min(1e-6) > threshold
    n = len(order)
    # suppressors[j, i]: i ranks above j in the same frame and overlaps it
    suppressors = over & (f[:, None] == f[None, :]) & torch.ones(n, n, dtype=torch.bool, device=b.device).tril(-1)
    keep = torch.ones(n, dtype=torch.bool, device=b.device)
    for _ in range(n):  # the greedy result is this fixed point; chains are short, so it converges in a few steps
        new = ~(suppressors & keep[None, :]).any(1)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def _empty(b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(b, 0, 4, device=device), torch.zeros(b, 0, 5, 2, device=device), torch.zeros(b, 0, device=device)


def _proposals(net: MTCNN, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P-Net stage: (frame (N,), squared boxes (N, 4), scores (N,)) over all frames."""
    cfg, dtype = net.config, next(net.parameters()).dtype
    b, _, h, w = rgb.shape
    x = _normalise(rgb)
    scores, offsets, cells, levels = [], [], [], []
    for level, s in enumerate(pyramid_scales(h, w, cfg.min_face_size, cfg.scale_factor)):
        hs, ws = int(h * s + 1), int(w * s + 1)
        prob, reg = net.pnet(F.interpolate(x, size=(hs, ws), mode="area").to(dtype).contiguous(memory_format=torch.channels_last))
        fh, fw = prob.shape[1:]
        ys = torch.arange(fh, device=x.device, dtype=torch.float32) * 2
        xs = torch.arange(fw, device=x.device, dtype=torch.float32) * 2
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        # a P-Net cell sees the 12×12 window at twice its position, in level pixels
        cells.append(torch.stack([gx / (ws / w), gy / (hs / h), (gx + 12) / (ws / w), (gy + 12) / (hs / h)], -1).reshape(-1, 4))
        scores.append(prob.reshape(b, -1))
        offsets.append(reg.flatten(2).transpose(1, 2))
        levels.append(torch.full((fh * fw,), level, device=x.device))
    if not scores:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, 4, device=x.device), torch.zeros(0, device=x.device)
    score, offset, cell, level = torch.cat(scores, 1), torch.cat(offsets, 1), torch.cat(cells), torch.cat(levels)
    frame, idx = torch.nonzero(score >= cfg.pnet_threshold, as_tuple=True)  # the stage's one host sync
    boxes, score, offset = cell[idx], score[frame, idx], offset[frame, idx]
    # IoU 0.5 as in the original, whose inclusive-pixel boxes give windows two cells apart an IoU just below it;
    # in continuous coordinates it is exactly 0.5, a tie rounding would decide differently per batch: keep them.
    keep = batched_nms(boxes, score, frame * len(scores) + level[idx], 0.5 + 1e-3)
    keep = keep[batched_nms(boxes[keep], score[keep], frame[keep], 0.7)]
    return frame[keep], _square(_regress(boxes[keep], offset[keep])), score[keep]


@torch.inference_mode()
def mtcnn_detect(net: MTCNN, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the cascade on RGB (B, 3, H, W) in [0, 1].

    Returns boxes (B, K, 4) and landmarks (B, K, 5, 2) in input pixels and O-Net scores (B, K), where the
    K detections of all frames are listed for every frame with score 0 in the frames they do not belong to
    (the layout of the anchor-based backends, so :func:`~bfr_core.faces.detect.detect_faces` treats them alike).
    """
    cfg, dtype = net.config, next(net.parameters()).dtype
    b = rgb.shape[0]
    rgb = rgb.float()
    frame, boxes, _ = _proposals(net, rgb)
    if len(boxes) == 0:
        return _empty(b, rgb.device)

    prob, reg = net.rnet(_crops(rgb, frame, boxes, 24, dtype))
    ok = prob > cfg.rnet_threshold
    frame, boxes, prob, reg = frame[ok], boxes[ok], prob[ok], reg[ok]
    keep = batched_nms(boxes, prob, frame, 0.7)
    frame, boxes = frame[keep], _square(_regress(boxes[keep], reg[keep]))
    if len(boxes) == 0:
        return _empty(b, rgb.device)

    prob, reg, pts = net.onet(_crops(rgb, frame, boxes, 48, dtype))
    pts = boxes[:, None, :2] + pts * (boxes[:, None, 2:] - boxes[:, None, :2])
    boxes = _regress(boxes, reg)
    keep = _nms_min(boxes, prob, frame, 0.7)
    frame, boxes, pts, prob = frame[keep], boxes[keep], pts[keep], prob[keep]

    k = len(keep)
    score = torch.zeros(b, k, device=rgb.device)
    score[frame, torch.arange(k, device=rgb.device)] = prob
    return boxes.expand(b, k, 4), pts.expand(b, k, 5, 2), score

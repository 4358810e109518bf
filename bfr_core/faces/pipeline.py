"""Restore the detected faces of whole photos or video frames: crop → restore → (parse) → paste back.

The one implementation behind the Restore Faces and Face Paste Back nodes and ``bfr restore``; callers
detect and select the faces first (:func:`~bfr_core.faces.detect_faces`, :func:`~bfr_core.faces.select_faces`).
Progress goes through ``stage(name, total) -> Progress`` for the stages ``crop``, ``restore``, ``parse`` and
``paste`` (the restore stage forwards the restorer's own ``on_progress(done, total, preview)``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..images import check_mask, from_model, split_alpha, to_model
from ..progress import Progress
from .chunks import is_oom
from .container import Faces
from .paste import PasteResult, crop_faces, paste_faces

if TYPE_CHECKING:
    from ..pipelines.base import FaceRestorer
    from .parsing import FaceParser

log = logging.getLogger(__name__)

__all__ = ["StageFn", "restore_with_backoff", "paste_restored", "restore_detected"]

#: ``stage(name, total)`` gives the Progress of one stage.
StageFn = Callable[[str, int], Progress]


def _stage(stage: StageFn | None, name: str, total: int) -> Progress | None:
    return stage(name, total) if stage is not None else None


def restore_with_backoff(restorer: "FaceRestorer", faces: torch.Tensor, seed: int = 0, batch_size: int = 8,
                         on_progress: Callable | None = None, check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """``restorer.restore_faces`` (crops (N, 3, S, S) in [-1, 1]), halving ``batch_size`` on out-of-memory.

    Restorers give the same result at any batch size, so a retry changes nothing but the speed.
    """
    while True:
        try:
            return restorer.restore_faces(faces, seed, batch_size=batch_size, on_progress=on_progress, check_cancel=check_cancel)
        except Exception as err:  # noqa: BLE001 - only out-of-memory is retried
            if not is_oom(err) or batch_size <= 1:
                raise
            batch_size //= 2
            del err
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory while restoring faces; retrying %d at a time", batch_size)


def paste_restored(image: torch.Tensor, restored: torch.Tensor, faces: Faces, *, parser: "FaceParser | None" = None,
                   crop_masks: torch.Tensor | None = None, background: torch.Tensor | None = None, feather: float = 0.1,
                   color_match: str = "none", visibility: float = 1.0, upscale: float = 1.0,
                   device: torch.device | str | None = None, output_device: torch.device | str | None = "cpu",
                   stage: StageFn | None = None) -> PasteResult:
    """Paste restored crops (N, S, S, 3) back; a face ``parser`` (on its device) limits the paste to the face itself,
    ``crop_masks`` (N, h, w) are multiplied in. See :func:`~bfr_core.faces.paste_faces` for the other arguments."""
    if crop_masks is not None:
        crop_masks = check_mask(crop_masks, len(faces), crop_masks.shape[-2], crop_masks.shape[-1], "crop masks") if len(faces) else None
    if parser is not None and len(faces):
        from .parsing import parse_masks

        rgb, _ = split_alpha(restored)
        parsed = parse_masks(rgb, parser)
        if (p := _stage(stage, "parse", 1)) is not None:
            p.step()
        if crop_masks is not None:
            crop_masks = parsed * F.interpolate(crop_masks[:, None], size=parsed.shape[-2:], mode="bilinear",
                                                align_corners=False)[:, 0]
        else:
            crop_masks = parsed
    return paste_faces(image, restored, faces, upscale=upscale, background=background, feather=feather, crop_masks=crop_masks,
                       color_match=color_match, visibility=visibility, device=device, output_device=output_device,
                       progress=_stage(stage, "paste", image.shape[0]))


def restore_detected(image: torch.Tensor, faces: Faces, restorer: "FaceRestorer", *, seed: int = 0, batch_size: int = 8,
                     parser: "FaceParser | None" = None, feather: float = 0.1, color_match: str = "none",
                     visibility: float = 1.0, upscale: float = 1.0, device: torch.device | str | None = None,
                     output_device: torch.device | str | None = "cpu",
                     stage: StageFn | None = None) -> tuple[PasteResult, torch.Tensor]:
    """Cut the ``faces`` of ``image`` (B, H, W, C) at the restorer's size, restore them, paste them back.

    Returns the pasted result and the restored crops (N, size, size, 3) on ``output_device``. Frames without
    faces pass through unchanged; the restorer is not called when there are no faces at all.
    """
    b, size = image.shape[0], int(restorer.size)
    crops = crop_faces(image, faces, crop_size=size, device=device, output_device="cpu", progress=_stage(stage, "crop", b))
    if len(faces):
        restore = _stage(stage, "restore", len(faces))
        on_progress, check_cancel = (restore.on_progress, restore.check_cancel) if restore is not None else (None, None)
        out = restore_with_backoff(restorer, to_model(crops), seed, batch_size, on_progress, check_cancel)
        restored = from_model(out, output_device or "cpu")
    else:
        restored = torch.zeros(0, size, size, 3, device=output_device)
    result = paste_restored(image, restored, faces, parser=parser, feather=feather, color_match=color_match,
                            visibility=visibility, upscale=upscale, device=device, output_device=output_device, stage=stage)
    return result, restored

"""Faces: detection, five-point alignment, crops and paste-back, batched on the tensor's device.

Typical use (what the Restore Faces node does)::

    det = load_detector("models/facedetection/detection_Resnet50_Final.pth", device="cuda")
    faces = select_faces(detect_faces(image, det), mode="all", min_size=32)
    crops = crop_faces(image, faces)                 # IMAGE (N, 512, 512, 3)
    restored = restorer(crops)                       # any restorer: aligned crops in, crops out
    result = paste_faces(image, restored, faces, color_match="mean_std")
    result.image, result.mask, result.frames_without_faces

or, with a FaceRestorer, crop → restore → paste in one call::

    result, restored = restore_detected(image, faces, restorer, seed=0)
"""

from .align import FFHQ_TEMPLATE_512, fit_similarity, invert_affine, template
from .chunks import chunk_for_memory, run_chunked
from .container import Faces
from .detect import DETECTOR_KINDS, FaceDetector, build_detector, detect_faces, load_builtin_detector, load_detector
from .paste import PasteResult, crop_faces, crop_mask, match_color, paste_faces
from .pipeline import paste_restored, restore_detected, restore_with_backoff
from .select import select_faces

__all__ = [
    "FFHQ_TEMPLATE_512", "template", "fit_similarity", "invert_affine",
    "chunk_for_memory", "run_chunked",
    "Faces",
    "DETECTOR_KINDS", "FaceDetector", "build_detector", "detect_faces", "load_builtin_detector", "load_detector",
    "PasteResult", "crop_faces", "crop_mask", "match_color", "paste_faces",
    "paste_restored", "restore_detected", "restore_with_backoff",
    "select_faces",
]

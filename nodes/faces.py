"""Face nodes: load a detector (and a face parser), cut aligned crops out of whole photos or video frames,
paste restored crops back, and a one-node Restore Faces that runs any of the pack's restorers.

Detector and parser weights live in ComfyUI's ``models/facedetection`` (the folder other face packs use);
a choice ending in *(auto-download)* is found in any of our model folders or downloaded into
``models/facedetection`` on first use through the core's weights path (verified, never into site-packages);
one ending in *(built-in)* is shipped with the pack (MTCNN) and works offline.

Restore Faces takes the restorer through one ``io.MultiType`` input, whose type is the comma-joined union
``BFR_VSPBFR,BFR_PLTRANS,…``: ComfyUI 0.3.64 validates a link against such a union (any member type
matches) and its frontend connects any of them. The value is then checked against the core's
``FaceRestorer`` protocol, so a new restorer type only has to be added to ``common.FACE_RESTORERS``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from bfr_core import images
from bfr_core.errors import InputError
from bfr_core.faces.container import Faces
from bfr_core.faces.detect import DETECTOR_KINDS
from bfr_core.faces.paste import COLOR_MATCH_MODES
from bfr_core.faces.select import SELECT_MODES, SORT_KEYS
from bfr_core.progress import Progress
from bfr_core.seeding import MAX_SEED
from bfr_core.weights import KNOWN, PackagedSource

from . import _comfy
from ._comfy import io
from .common import FACE_DETECTOR, FACE_PARSER, FACE_RESTORERS, FACES, file_key, resident

if TYPE_CHECKING:
    from bfr_core.pipelines.base import FaceRestorer

log = logging.getLogger("bfr")

CATEGORY = "BFR/Faces"
FOLDER = "facedetection"
AUTO = " (auto-download)"
BUILTIN = " (built-in)"
DETECTOR_IDS = ("retinaface-resnet50", "retinaface-mobilenet0.25", "yunet", "mtcnn")
PARSER_IDS = ("parsing-parsenet", "parsing-bisenet")
NO_FACE = ("pass through (warn)", "error")

_cache: dict[str, tuple[tuple, object]] = {}  # one detector and one parser stay loaded (nodes.common.resident)


# ------------------------------------------------------------------------------------------------ weights

def _choices(ids: tuple[str, ...], other_ids: tuple[str, ...]) -> list[str]:
    """Known files (shipped with the pack, or downloaded on first use), then other files in models/facedetection.

    Files named like a known checkpoint are covered by its auto-download entry (it finds them first);
    files of the other family (parsers in the detector list and vice versa) are left out.
    """
    skip = {KNOWN[i].filename for i in ids + other_ids}
    return [i + (BUILTIN if isinstance(KNOWN[i].sources[0], PackagedSource) else AUTO) for i in ids] + [f for f in _comfy.model_files((FOLDER,)) if f.rsplit("/", 1)[-1] not in skip]


def _resolve(choice: str):
    """A local file for a combo choice: a registry id (found in a model folder or downloaded) or a file name."""
    from bfr_core.weights import resolve

    spec = choice.removesuffix(AUTO).removesuffix(BUILTIN)
    if spec not in KNOWN:
        spec = _comfy.model_path(spec, (FOLDER,)) or spec
    path, entry = resolve(spec, dest_dir=_comfy.download_dir(FOLDER))
    if entry is not None:
        log.info("BFR: %s", entry.licence_notice())
    return path


@dataclass
class PlacedNet:
    """A detector or parser network and where it runs: the BFR_FACE_DETECTOR / BFR_FACE_PARSER wire.

    ``working_size``: longest image side the detector sees (``None``: full size).
    """

    net: torch.nn.Module
    on_cpu: bool
    working_size: int | None = None

    def ready(self) -> torch.device:
        """Put the network on its device (ComfyUI's memory manager handles the GPU case) and return it."""
        if self.on_cpu:
            self.net.to("cpu")
            return torch.device("cpu")
        return _comfy.load_on_device(self.net)


def _device_input() -> io.Combo.Input:
    return io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                          tooltip="auto: ComfyUI's compute device (the GPU when there is one). cpu keeps this small network off the GPU.")


class FaceDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRFaceDetectorLoader",
            display_name="Load Face Detector (BFR)",
            category=CATEGORY,
            description=(
                "Loads a five-landmark face detector: RetinaFace ResNet-50 (most accurate; needs the facexlib package), "
                "RetinaFace MobileNet-0.25 (fast; facexlib), YuNet (tiny, pure PyTorch) or MTCNN (built in: works offline). "
                "Weights come from models/facedetection or download there on first use (MIT licence)."
            ),
            inputs=[
                io.Combo.Input("detector", options=_choices(DETECTOR_IDS, PARSER_IDS),
                               tooltip="A known detector (found in a model folder or downloaded into models/facedetection), "
                                       "or a detector file in models/facedetection."),
                io.Combo.Input("kind", options=["auto", *DETECTOR_KINDS], default="auto",
                               tooltip="auto tells the network from the file (and the 1MB RetinaFace variant by its checksum). "
                                       "Name the kind only for a renamed copy of the Face-Detector-1MB file (retinaface_mobile0.25_1mb)."),
                io.Int.Input("working_size", default=640, min=0, max=4096, step=32,
                             tooltip="Images are shrunk so their longest side is at most this before detection (boxes are mapped "
                                     "back to full size): bounds the cost on large frames. 0 = detect at full size (finds tiny faces, slower)."),
                _device_input(),
            ],
            outputs=[FACE_DETECTOR.Output("face_detector", display_name="FACE_DETECTOR")],
        )

    @classmethod
    def execute(cls, detector: str, kind: str, working_size: int, device: str) -> io.NodeOutput:
        from bfr_core.faces import load_detector

        path = _resolve(detector)
        net = resident(_cache, "detector", (*file_key(path), kind), lambda: load_detector(path, kind))
        log.info("BFR: face detector %s (%s)", path.name, net.kind)
        return io.NodeOutput(PlacedNet(net, device == "cpu", working_size or None))


class FaceParserLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRFaceParserLoader",
            display_name="Load Face Parser (BFR)",
            category=CATEGORY,
            description=(
                "Loads a face-parsing network (facexlib's ParseNet or BiSeNet; needs the facexlib package). Connected to "
                "Face Paste Back or Restore Faces, it pastes only the face itself and keeps the original hair, ears and "
                "background. Weights come from models/facedetection or download there on first use (MIT licence)."
            ),
            inputs=[
                io.Combo.Input("parser", options=_choices(PARSER_IDS, DETECTOR_IDS),
                               tooltip="A known parser (found in a model folder or downloaded into models/facedetection), "
                                       "or a parsing file in models/facedetection."),
                _device_input(),
            ],
            outputs=[FACE_PARSER.Output("face_parser", display_name="FACE_PARSER")],
        )

    @classmethod
    def execute(cls, parser: str, device: str) -> io.NodeOutput:
        from bfr_core.faces.parsing import load_parser

        path = _resolve(parser)
        net = resident(_cache, "parser", file_key(path), lambda: load_parser(path))
        return io.NodeOutput(PlacedNet(net, device == "cpu"))


# ------------------------------------------------------------------------------------------------ helpers

class _Stages:
    """One ComfyUI progress bar shared by the stages of a node, each owning a fixed share of it."""

    UNITS = 1000

    def __init__(self, shares: dict[str, float], preview: bool = False) -> None:
        self.bar = _comfy.progress(self.UNITS, preview=preview)
        total = sum(shares.values())
        self.span: dict[str, tuple[float, float]] = {}
        at = 0.0
        for name, share in shares.items():
            self.span[name] = (at, share / total)
            at += share / total

    def callback(self, name: str) -> Callable[[int, int, torch.Tensor | None], None]:
        lo, width = self.span[name]

        def on_progress(done: int, total: int, preview: torch.Tensor | None = None) -> None:
            self.bar.on_progress(round(self.UNITS * (lo + width * done / max(total, 1))), self.UNITS, preview)
        return on_progress

    def stage(self, name: str, total: int) -> Progress:
        return Progress(max(total, 1), self.callback(name), self.bar.check_cancel)


def _selection_inputs() -> list:
    return [
        io.Combo.Input("select", options=list(SELECT_MODES), default="all",
                       tooltip="Per frame: all faces, the largest one, or the faces at the positions given in 'index' (after sorting)."),
        io.String.Input("index", default="0",
                        tooltip="For select = index: positions in the sorted order, e.g. '0' or '0,2'; negative counts from the end."),
        io.Combo.Input("sort_by", options=list(SORT_KEYS), default="area",
                       tooltip="Order of the faces within a frame: area and score largest first, x left to right, y top to bottom, "
                               "none = detector order. Crops come out in this order."),
        io.Boolean.Input("reverse", default=False, tooltip="Reverse the sort order."),
        io.Int.Input("min_size", default=0, min=0, max=4096,
                     tooltip="Ignore faces smaller than this many pixels (square root of the box area) in the original image."),
        io.Float.Input("score_threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Detection confidence needed. 0 = the detector's own default (RetinaFace 0.9, YuNet 0.6); "
                               "lower finds more faces (and more false ones)."),
        io.Int.Input("start", default=0, min=0, max=1000, tooltip="Skip this many faces per frame (after sorting and selecting)."),
        io.Int.Input("max_faces", default=0, min=0, max=1000, tooltip="Keep at most this many faces per frame; 0 = no limit."),
        io.Combo.Input("if_no_face", options=list(NO_FACE), default=NO_FACE[0],
                       tooltip="A frame where no face is found (or kept) passes through unchanged with a warning in the log, "
                               "or stops the run with an error."),
    ]


def _paste_inputs() -> list:
    return [
        io.Float.Input("feather", default=0.1, min=0.0, max=0.4, step=0.01,
                       tooltip="Width of the soft blend at the crop border, as a fraction of the face crop (so it follows the face size)."),
        io.Combo.Input("color_match", options=list(COLOR_MATCH_MODES), default="none",
                       tooltip="Move the restored face's colours to the original's (in Lab, under the paste mask): mean fixes "
                               "brightness and tint shifts, mean_std also contrast and saturation."),
        io.Float.Input("visibility", default=1.0, min=0.0, max=1.0, step=0.05,
                       tooltip="Blend between the original face (0) and the restored one (1)."),
        io.Float.Input("upscale", default=1.0, min=0.25, max=8.0, step=0.25,
                       tooltip="Output size factor: the photo is resized and the restored faces are pasted at the new size "
                               "(use the restorer's extra detail when enlarging)."),
    ]


def _detect(placed: PlacedNet, image: torch.Tensor, crop_size: int, opts: dict, progress: Progress) -> Faces:
    """Detect, then select, faces in an IMAGE batch; applies the no-face policy."""
    from bfr_core.faces import detect_faces, select_faces

    if not isinstance(placed, PlacedNet):
        raise InputError("the detector input must come from Load Face Detector (BFR).")
    image = images.check_image(image)
    device = placed.ready()
    thr = opts["score_threshold"] or None
    faces = detect_faces(image, placed.net, max_side=placed.working_size, score_threshold=thr, crop_size=crop_size,
                         device=device, progress=progress)
    found = len(faces)
    faces = select_faces(faces, mode=opts["select"], index=opts["index"], sort_by=opts["sort_by"], reverse=opts["reverse"],
                         min_size=float(opts["min_size"]), start=opts["start"], max_faces=opts["max_faces"])
    log.info("BFR: %s (%d detected before selection)", faces.describe(), found)
    missing = faces.frames_without_faces()
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", …" if len(missing) > 10 else "")
        msg = (f"no face found (or kept by the selection) in {len(missing)} of {faces.num_frames} frame(s): {shown}. "
               "Lower score_threshold or min_size, raise the detector's working_size for small faces, or check the selection.")
        if opts["if_no_face"] == "error":
            raise InputError(msg + " (if_no_face = error)")
        log.warning("BFR: %s Those frames pass through unchanged.", msg)
    return faces


def _selection(kwargs: dict) -> dict:
    keys = ("select", "index", "sort_by", "reverse", "min_size", "score_threshold", "start", "max_faces", "if_no_face")
    return {k: kwargs[k] for k in keys}


def crop_space_masks(faces: Faces, size: int, feather: float = 0.1, chunk: int = 16) -> torch.Tensor:
    """(N, size, size) per-face masks in crop space: the soft paste mask, zero where the crop lies outside the frame."""
    from bfr_core.faces import crop_mask
    from bfr_core.faces.align import apply_affine, compose_affine, scale_affine

    out = torch.zeros(len(faces), size, size)
    if len(faces) == 0:
        return out
    soft = crop_mask(size, feather)
    t = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(1, -1, 2)
    to_frame = compose_affine(faces.inverse.cpu(), scale_affine(faces.crop_size / size))
    h, w = faces.height, faces.width
    for lo in range(0, len(faces), chunk):  # bounded memory for long videos
        m = to_frame[lo:lo + chunk]
        p = apply_affine(m, pix.expand(m.shape[0], -1, -1))
        inside = (p[..., 0] >= -0.5) & (p[..., 0] <= w - 0.5) & (p[..., 1] >= -0.5) & (p[..., 1] <= h - 0.5)
        out[lo:lo + chunk] = soft * inside.view(-1, size, size)
    return out


def _paste(image: torch.Tensor, restored: torch.Tensor, faces: Faces, *, feather: float, color_match: str, visibility: float,
           upscale: float, parser: PlacedNet | None, masks: torch.Tensor | None, background: torch.Tensor | None,
           stages: _Stages):
    from bfr_core.faces import paste_restored

    if not isinstance(faces, Faces):
        raise InputError("the faces input must come from Face Detect & Crop (BFR).")
    if background is not None:
        background = images.check_image(background, "background")
        upscale = background.shape[2] / max(1, faces.width)
    return paste_restored(image, restored, faces, parser=_parser_net(parser, len(faces)), crop_masks=masks,
                          background=background, feather=feather, color_match=color_match, visibility=visibility,
                          upscale=upscale, device=_comfy.compute_device(), output_device=_comfy.output_device(),
                          stage=stages.stage)


def _parser_net(parser: PlacedNet | None, faces: int) -> torch.nn.Module | None:
    """The parser network on its device (only placed when there are faces to parse)."""
    if parser is None or faces == 0:
        return None
    parser.ready()
    return parser.net


# ------------------------------------------------------------------------------------------------ nodes

class FaceDetectCrop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRFaceDetectCrop",
            display_name="Face Detect & Crop (BFR)",
            category=CATEGORY,
            description=(
                "Finds the faces in whole photos or video frames and cuts each out aligned to the FFHQ five-point template, "
                "as an IMAGE batch of square crops that any face restorer takes. Connect the FACES output and the same image "
                "to Face Paste Back to put the restored crops back."
            ),
            inputs=[
                FACE_DETECTOR.Input("detector", tooltip="From Load Face Detector."),
                io.Image.Input("image", tooltip="Photos or video frames (gray and RGBA work; alpha is restored at paste time)."),
                io.Int.Input("crop_size", default=512, min=16, max=2048, step=16,
                             tooltip="Side of the aligned crops; 512 is what the restorers were trained on."),
                *_selection_inputs(),
            ],
            outputs=[
                io.Image.Output("crops", display_name="crops", tooltip="Aligned face crops, one per face, frame by frame."),
                FACES.Output("faces", display_name="FACES", tooltip="Where each crop came from (for Face Paste Back)."),
                io.Mask.Output("crop_masks", display_name="crop_masks",
                               tooltip="Per-face soft masks in crop space (zero where the crop extends past the image)."),
            ],
        )

    @classmethod
    def execute(cls, detector: PlacedNet, image: torch.Tensor, crop_size: int, **selection) -> io.NodeOutput:
        from bfr_core.faces import crop_faces

        image = images.check_image(image)
        stages = _Stages({"detect": 3, "crop": 1})
        faces = _detect(detector, image, crop_size, _selection(selection), stages.stage("detect", image.shape[0]))
        crops = crop_faces(image, faces, crop_size=crop_size, device=_comfy.compute_device(),
                           output_device=_comfy.output_device(), progress=stages.stage("crop", image.shape[0]))
        return io.NodeOutput(crops, faces, crop_space_masks(faces, crop_size).to(_comfy.output_device()))


class FacePasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRFacePasteBack",
            display_name="Face Paste Back (BFR)",
            category=CATEGORY,
            description=(
                "Pastes restored face crops back into the photos they were cut from, with a soft mask that follows the face "
                "size, optional face parsing and colour matching, overlapping faces blended, and an optional upscale. "
                "Frames without faces pass through; RGBA keeps its alpha."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The same photos or frames given to Face Detect & Crop."),
                io.Image.Input("restored", tooltip="The restored crops, in the order Face Detect & Crop gave them (any square size)."),
                FACES.Input("faces", tooltip="From Face Detect & Crop."),
                *_paste_inputs(),
                FACE_PARSER.Input("parser", optional=True,
                                  tooltip="Optional, from Load Face Parser: paste only the face itself (keeps the original hair and background)."),
                io.Mask.Input("crop_masks", optional=True,
                              tooltip="Optional per-face masks in crop space (e.g. Face Detect & Crop's, or edited ones), "
                                      "multiplied into the paste mask."),
                io.Image.Input("background", optional=True,
                               tooltip="Optional: the photo already enlarged by an upscale model; its size sets the upscale factor."),
            ],
            outputs=[
                io.Image.Output("image_out", display_name="IMAGE"),
                io.Mask.Output("mask", display_name="MASK", tooltip="Where restored faces were blended in, with their weight."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, restored: torch.Tensor, faces: Faces, feather: float, color_match: str,
                visibility: float, upscale: float, parser: PlacedNet | None = None, crop_masks: torch.Tensor | None = None,
                background: torch.Tensor | None = None) -> io.NodeOutput:
        stages = _Stages({"parse": 1 if parser is not None else 0, "paste": 1})
        result = _paste(image, restored, faces, feather=feather, color_match=color_match, visibility=visibility,
                        upscale=upscale, parser=parser, masks=crop_masks, background=background, stages=stages)
        return io.NodeOutput(result.image, result.mask)


def _place_restorer(restorer: "FaceRestorer") -> None:
    """Put a pipeline's networks under ComfyUI's memory manager on the compute device (and tell the pipeline)."""
    modules = restorer.modules()
    if modules:
        restorer.device = _comfy.load_on_device(*modules)


class RestoreFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRRestoreFaces",
            display_name="Restore Faces (BFR)",
            category=CATEGORY,
            description=(
                "Restores every face of whole photos or video frames in one node: detect and align (once), restore with any "
                "of the pack's restorers (VSPBFR, PLTrans, PGDiff, compact), paste back. Gives the same result as "
                "Face Detect & Crop → restore → Face Paste Back with the restorer's crop size."
            ),
            inputs=[
                io.MultiType.Input("restorer", types=FACE_RESTORERS,
                                   tooltip="A restorer: Load VSPBFR, Load PLTrans, PGDiff Face Restorer or Load Compact Restorer."),
                FACE_DETECTOR.Input("detector", tooltip="From Load Face Detector."),
                io.Image.Input("image", tooltip="Photos or video frames (gray and RGBA work; RGBA keeps its alpha)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Seed of the restorer (face i of the batch has its own stream)."),
                io.Int.Input("batch_size", default=8, min=1, max=256,
                             tooltip="Faces restored at once; halved automatically if the GPU runs out of memory (results do not change)."),
                *_selection_inputs(),
                *_paste_inputs(),
                FACE_PARSER.Input("parser", optional=True,
                                  tooltip="Optional, from Load Face Parser: paste only the face itself (keeps the original hair and background)."),
            ],
            outputs=[
                io.Image.Output("image_out", display_name="IMAGE"),
                io.Mask.Output("mask", display_name="MASK", tooltip="Where restored faces were blended in, with their weight."),
                io.Image.Output("restored_faces", display_name="restored_faces", tooltip="The restored aligned crops."),
            ],
        )

    @classmethod
    def execute(cls, restorer: "FaceRestorer", detector: PlacedNet, image: torch.Tensor, seed: int, batch_size: int,
                feather: float, color_match: str, visibility: float, upscale: float, parser: PlacedNet | None = None,
                **selection) -> io.NodeOutput:
        from bfr_core.faces import restore_detected
        from bfr_core.pipelines.base import FaceRestorer

        if not isinstance(restorer, FaceRestorer):
            raise InputError(f"the restorer input got a {type(restorer).__name__}, not a face restorer; connect a loader such as Load VSPBFR.")
        image = images.check_image(image)
        b, size = image.shape[0], int(restorer.size)
        stages = _Stages({"detect": 1, "crop": 0.5, "restore": 8, "parse": 0.5 if parser is not None else 0, "paste": 0.5},
                         preview=True)
        faces = _detect(detector, image, size, _selection(selection), stages.stage("detect", b))
        if len(faces):
            _place_restorer(restorer)
        result, restored = restore_detected(image, faces, restorer, seed=seed, batch_size=batch_size,
                                            parser=_parser_net(parser, len(faces)), feather=feather, color_match=color_match,
                                            visibility=visibility, upscale=upscale, device=_comfy.compute_device(),
                                            output_device=_comfy.output_device(), stage=stages.stage)
        return io.NodeOutput(result.image, result.mask, restored)


NODES = [FaceDetectorLoader, FaceParserLoader, FaceDetectCrop, FacePasteBack, RestoreFaces]

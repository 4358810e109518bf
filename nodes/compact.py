"""Compact restorer nodes: the built-in model that ships inside the pack (no download), a loader and a restore node.

Its output type is one of the face restorers Restore Faces accepts, so a new user can restore whole photos
offline: Load Compact Restorer → Restore Faces (with a face detector) → Save Image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import _comfy
from ._comfy import io
from .common import COMPACT, choice_key, crops_to_model, load_choice, model_to_crops, precision_input, resident

if TYPE_CHECKING:
    from bfr_core.pipelines.compact import CompactPipeline

CATEGORY = "BFR/Compact"
BUILTIN = "built-in (ships with the pack)"
_pipelines: dict[str, tuple[tuple, object]] = {}  # one compact restorer stays loaded (nodes.common.resident)


class CompactLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRCompactLoader",
            display_name="Load Compact Restorer (BFR)",
            category=CATEGORY,
            description=(
                "Loads the compact face restorer: a 4.3 M-parameter U-Net that restores a 512² face in one pass "
                "(about a second on two CPU cores). The built-in weights ship inside the pack, so it works offline; they "
                "were trained on FFHQ and CelebA-HQ faces and are for non-commercial use. A file in models/bfr "
                "exported by trainer/configs/compact_restorer.yaml can be chosen instead."
            ),
            inputs=[
                io.Combo.Input("model", options=[BUILTIN, *_comfy.model_files(("bfr",))],
                               tooltip="The built-in weights, or a compact_restorer .safetensors in models/bfr."),
                precision_input(),
            ],
            outputs=[COMPACT.Output("compact", display_name="COMPACT")],
        )

    @classmethod
    def execute(cls, model: str, precision: str) -> io.NodeOutput:
        from bfr_core.pipelines.compact import CompactPipeline, load_compact

        device = _comfy.compute_device()
        def build() -> CompactPipeline:
            if model == BUILTIN:
                return load_compact(device=device, dtype=precision)
            return CompactPipeline(load_choice(model, "compact_restorer").model, device=device, dtype=precision)

        source = (model,) if model == BUILTIN else choice_key(model)
        return io.NodeOutput(resident(_pipelines, "compact", (*source, precision, str(device)), build))


class CompactRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRCompactRestore",
            display_name="Compact Restore (BFR)",
            category=CATEGORY,
            description="Restores aligned face crops with the compact restorer (deterministic: no seed). For whole photos "
                        "use Restore Faces, or Face Detect & Crop → this node → Face Paste Back.",
            inputs=[
                COMPACT.Input("compact", tooltip="From Load Compact Restorer."),
                io.Image.Input("image", tooltip="Aligned face crops (e.g. from Face Detect & Crop); square crops are resized to 512."),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Faces processed at once; results do not change."),
            ],
            outputs=[io.Image.Output("restored", display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, compact: "CompactPipeline", image: torch.Tensor, batch_size: int) -> io.NodeOutput:
        faces, alpha = crops_to_model(image, compact.size)
        compact.device = _comfy.load_on_device(compact.model)
        progress = _comfy.progress(-(-faces.shape[0] // batch_size), preview=True)
        out = compact.restore_faces(faces, batch_size=batch_size, on_progress=progress.on_progress,
                                    check_cancel=progress.check_cancel)
        return io.NodeOutput(model_to_crops(out.cpu(), alpha))


NODES = [CompactLoader, CompactRestore]

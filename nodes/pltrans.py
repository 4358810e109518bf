"""PLTrans nodes: a loader and a restore node (CVPR 2024; this project's reference implementation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bfr_core.seeding import MAX_SEED

from . import _comfy
from ._comfy import io
from .common import (PLTRANS, choice_key, crops_to_model, load_choice, model_to_crops, precision_input, resident,
                     weight_choices)

if TYPE_CHECKING:
    from bfr_core.pipelines.pltrans import PLTransPipeline

CATEGORY = "BFR/PLTrans"
_pipelines: dict[str, tuple[tuple, object]] = {}  # one PLTrans stays loaded (nodes.common.resident)


def _chain_inputs() -> list:
    return [
        io.Int.Input("n", default=200, min=1, max=1000,
                     tooltip="Perturb the degraded face's latent to diffusion step n (more for heavier degradation)."),
        io.Int.Input("s", default=20, min=0, max=1000, tooltip="Reverse the latent diffusion from n down to s (s < n), then jump to the clean latent."),
        io.Int.Input("steps", default=10, min=1, max=1000, tooltip="UNet evaluations between n and s."),
    ]


class PLTransLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPLTransLoader",
            display_name="Load PLTrans (BFR)",
            category=CATEGORY,
            description=("Loads a PLTrans model (prior-based latent transformations, CVPR 2024). No official weights exist: "
                         "train one with `accelerate launch trainer/train.py` (PLTrans stages) and put the exported "
                         ".safetensors in models/bfr."),
            inputs=[
                io.Combo.Input("model", options=weight_choices([]) or ["pltrans.safetensors"],
                               tooltip="A PLTrans checkpoint in models/bfr (exported by our trainer)."),
                precision_input(),
                *_chain_inputs(),
            ],
            outputs=[PLTRANS.Output("pltrans", display_name="PLTRANS")],
        )

    @classmethod
    def execute(cls, model: str, precision: str, n: int, s: int, steps: int) -> io.NodeOutput:
        from bfr_core.pipelines.pltrans import PLTransPipeline

        device = _comfy.compute_device()
        pipe = resident(_pipelines, "pltrans", (*choice_key(model), precision, str(device)),
                        lambda: PLTransPipeline(load_choice(model, "pltrans").model, device=device, dtype=precision))
        pipe.n, pipe.s, pipe.steps = n, s, steps
        return io.NodeOutput(pipe)


class PLTransRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPLTransRestore",
            display_name="PLTrans Restore (BFR)",
            category=CATEGORY,
            description="Restores aligned faces with PLTrans: the degraded features are regularised by latent diffusion "
                        "(with DWT low-frequency injection), then attend to the HQ dictionary prior.",
            inputs=[
                PLTRANS.Input("pltrans", tooltip="From Load PLTrans."),
                io.Image.Input("image", tooltip="Aligned face crops (e.g. from FaceDetectCrop); square crops are resized to the model's size."),
                *_chain_inputs(),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise of the latent perturbation (face i has its own stream)."),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Faces processed at once; lower it if memory runs out."),
            ],
            outputs=[io.Image.Output("restored", display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, pltrans: "PLTransPipeline", image: torch.Tensor, n: int, s: int, steps: int, seed: int,
                batch_size: int) -> io.NodeOutput:
        faces, alpha = crops_to_model(image, pltrans.size)
        pltrans.device = _comfy.load_on_device(pltrans.model)
        n_chunks = -(-faces.shape[0] // batch_size)
        progress = _comfy.progress(pltrans.steps_per_chunk(n, s, steps) * n_chunks, preview=True)
        out = pltrans(faces, n=n, s=s, steps=steps, seed=seed, batch_size=batch_size,
                      on_progress=progress.on_progress, check_cancel=progress.check_cancel)
        return io.NodeOutput(model_to_crops(out.cpu(), alpha))


NODES = [PLTransLoader, PLTransRestore]

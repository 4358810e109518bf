"""Degrade: synthesise low-quality faces with the training degradations of the three papers."""

from __future__ import annotations

import json

import torch

from bfr_core import images
from bfr_core.degrade import PRESETS, degrade, parse_overrides
from bfr_core.seeding import MAX_SEED

from . import _comfy
from ._comfy import io

#: Images degraded per call of the core; bounds memory on long videos and gives progress/interrupt points.
CHUNK = 16


class Degrade(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRDegrade",
            display_name="Degrade (BFR)",
            category="BFR/tools",
            description=(
                "Blur, downsample, add noise and JPEG-compress images the way face-restoration papers make their "
                "training and test inputs. Image i of the batch uses seed + i, so the same seed always gives the same result."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Images to degrade (any size; RGBA keeps its alpha)."),
                io.Combo.Input("preset", options=list(PRESETS), default="gfpgan",
                               tooltip="gfpgan: GFPGAN/VSPBFR first-order model; gpen: PLTrans Eq. 13; realesrgan: second-order model (PGDiff's restorer)."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Image i of the batch uses seed + i."),
                io.String.Input("overrides", default="", multiline=True,
                                tooltip="Fix or re-range parameters, e.g. 'scale=16, noise=0:10, jpeg_quality=70, kernel=iso'. "
                                        "Empty: the preset's published ranges."),
                io.Combo.Input("jpeg", options=["pillow", "kornia", "none"], default="pillow",
                               tooltip="pillow: real libjpeg round trip; kornia: differentiable JPEG; none: skip JPEG."),
            ],
            outputs=[
                io.Image.Output("degraded", display_name="IMAGE"),
                io.String.Output("parameters", display_name="parameters", tooltip="The sampled parameters of each image, as JSON lines."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, preset: str, seed: int, overrides: str, jpeg: str) -> io.NodeOutput:
        options = parse_overrides(overrides)
        rgb, alpha = images.split_alpha(image)
        device = _comfy.compute_device()
        x = rgb.permute(0, 3, 1, 2)
        progress = _comfy.progress(x.shape[0])
        outs, records = [], []
        for start in range(0, x.shape[0], CHUNK):
            chunk = x[start:start + CHUNK].to(device)
            seeds = [seed + start + i for i in range(chunk.shape[0])]
            y, params = degrade(chunk, preset, seeds, jpeg=jpeg, **options)
            outs.append(y.permute(0, 2, 3, 1).to(_comfy.output_device()))
            records += params.as_records()
            progress.step(chunk.shape[0])
        out = torch.cat(outs) if outs else rgb
        text = "\n".join(json.dumps(r) for r in records)
        return io.NodeOutput(images.merge_alpha(out, alpha), text)


NODES = [Degrade]

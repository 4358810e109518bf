"""VSPBFR nodes: a loader, the four stages (style encoder → code diffuser → StyleGAN2 bank → SMART restorer),
the inverted-image preview, and a one-node restore for the common case."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bfr_core.seeding import MAX_SEED

from . import _comfy
from ._comfy import io
from .common import (FEATURE_BANK, VSPBFR, WPLUS, choice_key, crops_to_model, load_choice, model_to_crops, precision_input,
                     resident, weight_choices)

if TYPE_CHECKING:  # the models are imported when a node runs, not when ComfyUI lists the nodes
    from bfr_core.pipelines.vspbfr import FeatureBank, VSPBFRPipeline

_pipelines: dict[str, tuple[tuple, object]] = {}  # one VSPBFR stays loaded (nodes.common.resident)

CATEGORY = "BFR/VSPBFR"


def _seed_input(tooltip: str) -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True, tooltip=tooltip)


def _batch_input() -> io.Int.Input:
    return io.Int.Input("batch_size", default=8, min=1, max=256,
                        tooltip="Faces processed at once. Lower it if you run out of GPU memory; results do not change.")


def _on_device(pipe: "VSPBFRPipeline", *modules: torch.nn.Module) -> None:
    pipe.device = _comfy.load_on_device(*modules)


def _chunks(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class VSPBFRLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRVSPBFRLoader",
            display_name="Load VSPBFR (BFR)",
            category=CATEGORY,
            description=(
                "Loads the four VSPBFR networks (Pattern Recognition 2025): the e4e style encoder with its StyleGAN2 "
                "feature bank, the code diffuser and the SMART restorer. The official weights (Hugging Face Wanglong2/VSPBFR, "
                "MIT; the StyleGAN2 decoder derives from NVIDIA's FFHQ model, non-commercial) download into models/bfr on first use."
            ),
            inputs=[
                io.Combo.Input("style_encoder", options=weight_choices(["vspbfr-style-encoder"]),
                               tooltip="e4e style encoder + StyleGAN2 decoder checkpoint (style_encoder_decoder.pt or a converted copy)."),
                io.Combo.Input("code_diffuser", options=weight_choices(["vspbfr-code-diffuser"]),
                               tooltip="Code diffuser checkpoint (code_diffuser.pt)."),
                io.Combo.Input("restorer", options=weight_choices(["vspbfr-restoration-net"]),
                               tooltip="SMART restoration network checkpoint (restoration_net.pt; its EMA weights are used)."),
                precision_input(),
                io.Combo.Input("sampler", options=["x0 (released)", "eps (paper)"], default="x0 (released)",
                               tooltip="Code-diffuser sampler: the released deterministic x0 chain, or the paper's ε-parameterised "
                                       "one (for diffusers trained that way)."),
            ],
            outputs=[VSPBFR.Output("vspbfr", display_name="VSPBFR")],
        )

    @classmethod
    def execute(cls, style_encoder: str, code_diffuser: str, restorer: str, precision: str, sampler: str) -> io.NodeOutput:
        device = _comfy.compute_device()

        def build() -> VSPBFRPipeline:
            from bfr_core.pipelines.vspbfr import VSPBFRPipeline

            enc = load_choice(style_encoder, "vspbfr_e4e_encoder").model
            dec = load_choice(style_encoder, "stylegan2_generator").model
            diff = load_choice(code_diffuser, "vspbfr_code_diffuser").model
            rest = load_choice(restorer, "vspbfr_restoration_net").model
            return VSPBFRPipeline(enc, dec, diff, rest, device=device, dtype=precision, sampler=sampler.split()[0])

        key = (choice_key(style_encoder), choice_key(code_diffuser), choice_key(restorer), precision, sampler, str(device))
        return io.NodeOutput(resident(_pipelines, "vspbfr", key, build))


class VSPBFRStyleEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRVSPBFRStyleEncoder",
            display_name="VSPBFR Style Encoder (BFR)",
            category=CATEGORY,
            description="Encodes aligned low-quality faces into StyleGAN2 W+ codes (batch, 18, 512) with the fine-tuned e4e encoder.",
            inputs=[
                VSPBFR.Input("vspbfr", tooltip="From Load VSPBFR."),
                io.Image.Input("image", tooltip="Aligned face crops (e.g. from FaceDetectCrop); square crops of other sizes are resized to 512."),
                _batch_input(),
            ],
            outputs=[WPLUS.Output("codes", display_name="codes")],
        )

    @classmethod
    def execute(cls, vspbfr: VSPBFRPipeline, image: torch.Tensor, batch_size: int) -> io.NodeOutput:
        faces, _ = crops_to_model(image, vspbfr.size)
        _on_device(vspbfr, vspbfr.style_encoder)
        chunks = list(_chunks(faces.shape[0], batch_size))
        progress = _comfy.progress(len(chunks))
        codes = [vspbfr.encode(faces[lo:hi], progress).cpu() for lo, hi in chunks]
        return io.NodeOutput(torch.cat(codes))


class VSPBFRCodeDiffuser(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRVSPBFRCodeDiffuser",
            display_name="VSPBFR Code Diffuser (BFR)",
            category=CATEGORY,
            description="Denoises W+ codes with VSPBFR's 4-step diffusion in W+, conditioned on the degraded face's codes (the visual style prompt).",
            inputs=[
                VSPBFR.Input("vspbfr", tooltip="From Load VSPBFR."),
                WPLUS.Input("codes", tooltip="From VSPBFR Style Encoder."),
                _seed_input("Start noise of the diffusion (face i uses its own stream, so batching does not change results)."),
            ],
            outputs=[WPLUS.Output("denoised", display_name="codes")],
        )

    @classmethod
    def execute(cls, vspbfr: VSPBFRPipeline, codes: torch.Tensor, seed: int) -> io.NodeOutput:
        _on_device(vspbfr, vspbfr.code_diffuser)
        progress = _comfy.progress(vspbfr.schedule.num_timesteps)
        return io.NodeOutput(vspbfr.diffuse(codes, seed, progress=progress).cpu())


class VSPBFRStyleGANBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRVSPBFRStyleGANBank",
            display_name="VSPBFR StyleGAN Bank (BFR)",
            category=CATEGORY,
            description="Runs the StyleGAN2 generator on the denoised codes up to 512 px and keeps its features (the facial feature bank) for the SMART restorer.",
            inputs=[
                VSPBFR.Input("vspbfr", tooltip="From Load VSPBFR."),
                WPLUS.Input("codes", tooltip="Denoised codes from VSPBFR Code Diffuser."),
                _seed_input("Noise injected into the StyleGAN2 layers."),
                _batch_input(),
            ],
            outputs=[FEATURE_BANK.Output("bank", display_name="bank")],
        )

    @classmethod
    def execute(cls, vspbfr: VSPBFRPipeline, codes: torch.Tensor, seed: int, batch_size: int) -> io.NodeOutput:
        _on_device(vspbfr, vspbfr.decoder)
        chunks = list(_chunks(codes.shape[0], batch_size))
        progress = _comfy.progress(len(chunks))
        parts = [vspbfr.feature_bank(codes[lo:hi], seed, first_index=lo, progress=progress) for lo, hi in chunks]
        from bfr_core.pipelines.vspbfr import FeatureBank

        # Kept on ComfyUI's intermediate device between nodes, like IMAGE: a long batch must not pin GPU memory.
        out = _comfy.output_device()
        bank = FeatureBank([torch.cat([p.features[k] for p in parts]).to(out) for k in range(len(parts[0].features))])
        return io.NodeOutput(bank)


class VSPBFRInvertedImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRVSPBFRInvertedImage",
            display_name="VSPBFR Inverted Image (BFR)",
            category=CATEGORY,
            description="Renders W+ codes with the full 1024 px StyleGAN2 (average-pooled to 512): what the feature bank 'sees'. "
                        "A preview/debug view; the restoration itself does not need it.",
            inputs=[
                VSPBFR.Input("vspbfr", tooltip="From Load VSPBFR."),
                WPLUS.Input("codes", tooltip="Codes from the style encoder or the code diffuser."),
                _seed_input("Noise injected into the StyleGAN2 layers (same stream as the bank)."),
                _batch_input(),
            ],
            outputs=[io.Image.Output("image", display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, vspbfr: VSPBFRPipeline, codes: torch.Tensor, seed: int, batch_size: int) -> io.NodeOutput:
        _on_device(vspbfr, vspbfr.decoder)
        chunks = list(_chunks(codes.shape[0], batch_size))
        progress = _comfy.progress(len(chunks), preview=True)
        images = [model_to_crops(vspbfr.feature_bank(codes[lo:hi], seed, preview=True, first_index=lo, progress=progress).preview, None)
                  for lo, hi in chunks]
        return io.NodeOutput(torch.cat(images))


class VSPBFRSMARTRestorer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRVSPBFRSMARTRestorer",
            display_name="VSPBFR SMART Restorer (BFR)",
            category=CATEGORY,
            description="Restores the aligned faces with the SMART auto-encoder, guided by the denoised codes and the StyleGAN2 feature bank.",
            inputs=[
                VSPBFR.Input("vspbfr", tooltip="From Load VSPBFR."),
                io.Image.Input("image", tooltip="The same aligned low-quality crops given to the style encoder."),
                WPLUS.Input("codes", tooltip="Denoised codes from VSPBFR Code Diffuser."),
                FEATURE_BANK.Input("bank", tooltip="From VSPBFR StyleGAN Bank."),
                _seed_input("Random styles (with style mixing) and noise of the restorer."),
                io.Float.Input("mixing_prob", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Probability of style mixing of the random styles (0.5 as released)."),
                _batch_input(),
            ],
            outputs=[io.Image.Output("restored", display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, vspbfr: VSPBFRPipeline, image: torch.Tensor, codes: torch.Tensor, bank: FeatureBank,
                seed: int, mixing_prob: float, batch_size: int) -> io.NodeOutput:
        faces, alpha = crops_to_model(image, vspbfr.size)
        _on_device(vspbfr, vspbfr.restorer)
        chunks = list(_chunks(faces.shape[0], batch_size))
        progress = _comfy.progress(len(chunks), preview=True)
        out = [vspbfr.restore(faces[lo:hi], codes[lo:hi], bank.select(slice(lo, hi)), seed, mixing_prob=mixing_prob,
                              first_index=lo, progress=progress).cpu() for lo, hi in chunks]
        return io.NodeOutput(model_to_crops(torch.cat(out), alpha))


class VSPBFRRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRVSPBFRRestore",
            display_name="VSPBFR Restore (BFR)",
            category=CATEGORY,
            description="Restores aligned faces with the whole VSPBFR pipeline in one node (the four stages with one seed).",
            inputs=[
                VSPBFR.Input("vspbfr", tooltip="From Load VSPBFR."),
                io.Image.Input("image", tooltip="Aligned face crops (e.g. from FaceDetectCrop); square crops of other sizes are resized to 512."),
                _seed_input("Seeds the diffusion start, the random styles and the noise injections."),
                _batch_input(),
            ],
            outputs=[io.Image.Output("restored", display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, vspbfr: VSPBFRPipeline, image: torch.Tensor, seed: int, batch_size: int) -> io.NodeOutput:
        faces, alpha = crops_to_model(image, vspbfr.size)
        _on_device(vspbfr, vspbfr.style_encoder, vspbfr.code_diffuser, vspbfr.decoder, vspbfr.restorer)
        n_chunks = -(-faces.shape[0] // batch_size)
        progress = _comfy.progress(vspbfr.steps_per_chunk * n_chunks, preview=True)
        result = vspbfr(faces, seed, batch_size=batch_size, on_progress=progress.on_progress, check_cancel=progress.check_cancel)
        return io.NodeOutput(model_to_crops(result.restored.cpu(), alpha))


NODES = [VSPBFRLoader, VSPBFRStyleEncoder, VSPBFRCodeDiffuser, VSPBFRStyleGANBank, VSPBFRInvertedImage,
         VSPBFRSMARTRestorer, VSPBFRRestore]

"""PGDiff nodes: loaders (DifFace's face DDPM, PGDiff's RRDB restorer, ArcFace), one node per guidance term, the
task presets, the Partial Guidance Sampler, and a PGDiff Face Restorer for Restore Faces.

A GUIDANCE wire holds a ``bfr_core.guidance.CompositeGuidance``: its terms, the update rule (classic μ − sΣg, or
the dynamic scale with global or per-channel norms) and the scale. Each term node adds its term to the incoming
guidance (terms compose by chaining) and keeps its rule; a preset sets the released rule; the sampler may
override both. Networks of the guidance (restorer, ArcFace, VGG, discriminator) are placed on the GPU by the
sampler, with the prior, through ComfyUI's memory manager.

ComfyUI runs nodes under ``torch.inference_mode()``, whose tensors autograd cannot use; the guidance differentiates
through ArcFace, VGG and the discriminator, so the loaders build their networks, and the sampler places them and
samples, under ``torch.inference_mode(False)`` (the core clones inference-mode input tensors itself).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from bfr_core import images
from bfr_core.errors import InputError
from bfr_core.seeding import MAX_SEED

from . import _comfy
from ._comfy import io
from .common import (
    ARCFACE,
    GUIDANCE,
    PGDIFF,
    PGDIFF_PRIOR,
    PGDIFF_RESTORER,
    choice_key,
    crops_to_model,
    load_choice,
    model_to_crops,
    precision_input,
    resident,
    weight_choices,
)

if TYPE_CHECKING:  # the models are imported when a node runs, not when ComfyUI lists the nodes
    from bfr_core.guidance import CompositeGuidance, GuidanceTerm
    from bfr_core.pipelines.pgdiff import PGDiffPipeline

log = logging.getLogger("bfr")

CATEGORY = "BFR/PGDiff"
GUIDANCE_CATEGORY = "BFR/PGDiff/Guidance"
SLAB = ("Licence: NTU S-Lab License 1.0, non-commercial use only (github.com/pq-yang/PGDiff); the notice is logged "
        "when the weights load.")
INSIGHTFACE = "Licence: insightface model zoo, non-commercial research only; the notice is logged when the weights load."
VGG_ID = "vgg16-imagenet"  # torchvision's vgg16-397923af.pth in the weights registry

#: Sampler widget → PGDiffPipeline.update (None: the guidance's own rule).
UPDATE_CHOICES = {"from guidance": None, "classic": "classic", "dynamic (global norm)": "dynamic-global",
                  "dynamic (per-channel norm)": "dynamic-channel"}
#: Task widget → (bfr_core.guidance.presets name, inputs it needs, inputs it may use).
TASKS = {
    "restoration": ("restoration", ("restorer",), ()),
    "colorization": ("colorization", (), ("color_reference",)),
    "inpainting": ("inpainting", ("mask",), ()),
    "old photo restoration": ("old_photo_restoration", ("restorer",), ("mask", "color_reference")),
    "reference-based restoration": ("ref_restoration", ("restorer", "arcface", "reference"), ()),
}

_cache: dict[str, tuple[tuple, object]] = {}


def _cached(kind: str, key: tuple, build: Callable[[], object]) -> object:
    """One resident object per kind (prior, restorer, ...): loading other weights frees the old ones."""

    def build_outside_inference_mode() -> object:
        with torch.inference_mode(False):  # weights that gradients may flow through (see the module docstring)
            return build()

    return resident(_cache, kind, key, build_outside_inference_mode)


def _frozen(choice: str, architecture: str) -> torch.nn.Module:
    return load_choice(choice, architecture).model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ loaders

class PGDiffPriorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffPriorLoader",
            display_name="Load PGDiff Face Prior (BFR)",
            category=CATEGORY,
            description=("Loads the face DDPM PGDiff samples from: DifFace's FFHQ-512 iDDPM (iddpm_ffhq512_ema500000.pth, "
                         "downloaded into models/bfr on first use), or a prior trained with our trainer. " + SLAB),
            inputs=[
                io.Combo.Input("ddpm", options=weight_choices(["difface-ddpm-ffhq512"]),
                               tooltip="The ε/learned-variance ADM UNet checkpoint (DifFace's iddpm_ffhq512_ema500000.pth or a converted copy)."),
                precision_input(),
            ],
            outputs=[PGDIFF_PRIOR.Output("prior", display_name="PRIOR")],
        )

    @classmethod
    def execute(cls, ddpm: str, precision: str) -> io.NodeOutput:
        device = _comfy.compute_device()

        def build():
            from bfr_core.pipelines.pgdiff import PGDiffPipeline

            return PGDiffPipeline(_frozen(ddpm, "adm_unet"), device=device, dtype=precision)

        return io.NodeOutput(_cached("prior", (*choice_key(ddpm), precision, str(device)), build))


class PGDiffRestorerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffRestorerLoader",
            display_name="Load PGDiff Restorer (BFR)",
            category=CATEGORY,
            description=("Loads PGDiff's time-conditioned RRDB restorer (rrdb_iter_100000.pth), the smooth-semantics target "
                         "of restoration, old-photo and reference-based restoration. It runs in the sampler's precision. " + SLAB),
            inputs=[
                io.Combo.Input("restorer", options=weight_choices(["pgdiff-restorer-rrdb"]),
                               tooltip="The RRDB restorer checkpoint (rrdb_iter_100000.pth, hosted on Google Drive: if the "
                                       "download is refused, put the file from the PGDiff README into models/bfr)."),
            ],
            outputs=[PGDIFF_RESTORER.Output("pgdiff_restorer", display_name="RESTORER")],
        )

    @classmethod
    def execute(cls, restorer: str) -> io.NodeOutput:
        return io.NodeOutput(_cached("restorer", choice_key(restorer), lambda: _frozen(restorer, "pgdiff_rrdb_restorer")))


class ArcFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRArcFaceLoader",
            display_name="Load ArcFace (BFR)",
            category=CATEGORY,
            description=("Loads insightface's ArcFace iresnet50 (ms1mv3_arcface_r50_fp16.pth), the identity network of "
                         "PGDiff's reference-based restoration. " + INSIGHTFACE),
            inputs=[
                io.Combo.Input("arcface", options=weight_choices(["arcface-ms1mv3-r50"]),
                               tooltip="An insightface iresnet checkpoint (ms1mv3_arcface_r50_fp16.pth; hosted on Google Drive: "
                                       "if the download is refused, put the file from insightface's model zoo into models/bfr)."),
            ],
            outputs=[ARCFACE.Output("arcface_net", display_name="ARCFACE")],
        )

    @classmethod
    def execute(cls, arcface: str) -> io.NodeOutput:
        return io.NodeOutput(_cached("arcface", choice_key(arcface), lambda: _frozen(arcface, "arcface_iresnet")))


# ------------------------------------------------------------------------------------------------ guidance terms

def _guidance_input() -> io.Input:
    return GUIDANCE.Input("guidance", optional=True,
                          tooltip="Guidance to add this term to (from another term node or a task preset). Without it a new "
                                  "guidance starts: classic update with scale 0.1, unless the sampler sets them.")


def _term_inputs(weight: float, max_weight: float, what: str) -> list[io.Input]:
    return [
        io.Float.Input("weight", default=weight, min=0.0, max=max_weight, step=0.001,
                       tooltip=f"Weight of {what} (losses are summed over pixels, as released, so weights carry over from PGDiff's commands)."),
        io.Float.Input("start", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Where the term starts acting, as a fraction of the sampled schedule: 1.0 = from the first (noisiest) step."),
        io.Float.Input("stop", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Where it stops: 0.0 = until the last step. Needs stop ≤ start."),
        io.Int.Input("n_steps", default=1, min=1, max=20,
                     tooltip="Gradient steps per sampler step inside the multi-step window (the first 30 % of the schedule); 1 as released."),
    ]


def _target_inputs(what: str) -> list[io.Input]:
    return [
        PGDIFF_RESTORER.Input("restorer", optional=True,
                              tooltip=f"{what}: the RRDB restorer's output at each step (from Load PGDiff Restorer). Connect this "
                                      "or target_image; with neither, the sampler's low-quality input is the target."),
        io.Image.Input("target_image", optional=True,
                       tooltip=f"{what}: any image, e.g. another restorer's output (VSPBFR, PLTrans, CodeFormer) of the same crops; "
                               "one image or one per face, resized to the prior's size."),
    ]


def _target(restorer: torch.nn.Module | None, target_image: torch.Tensor | None, what: str):
    if restorer is not None and target_image is not None:
        raise InputError(f"{what}: connect either a restorer or a target image, not both.")
    return images.to_model(target_image) if target_image is not None else restorer


def _mask(mask: torch.Tensor | None, what: str) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3):
        raise InputError(f"{what} must be a MASK (batch, height, width), 1 where pixels are missing.")
    mask = mask.float()
    if not (mask > 0).any():
        log.warning("BFR: the %s marks no pixel (all zero): paint it in the mask editor (white = missing).", what)
    return mask if mask.dim() == 3 else mask[None]


def _as_guidance(guidance) -> "CompositeGuidance":
    """The incoming guidance, or a new empty one (classic update, scale 0.1)."""
    from bfr_core.guidance import CompositeGuidance

    if guidance is None:
        return CompositeGuidance()
    if not isinstance(guidance, CompositeGuidance):
        raise InputError(f"the guidance input got a {type(guidance).__name__}; connect a guidance term or task preset node.")
    return guidance


def _chain(guidance: "CompositeGuidance | None", term: "GuidanceTerm") -> io.NodeOutput:
    return io.NodeOutput(_as_guidance(guidance).add(term))


class GuidanceSmoothSemantics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffGuidanceSmoothSemantics",
            display_name="PGDiff Guidance: Smooth Semantics (BFR)",
            category=GUIDANCE_CATEGORY,
            description="Adds ‖f − x̂₀‖²: pulls the predicted clean face towards a smooth restoration f (PGDiff's restorer, "
                        "or any image such as another restorer's output). The term of blind restoration.",
            inputs=[*_term_inputs(1.0, 1000.0, "the smooth-semantics loss"), _guidance_input(), *_target_inputs("Target")],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, weight: float, start: float, stop: float, n_steps: int, guidance=None, restorer=None,
                target_image=None) -> io.NodeOutput:
        from bfr_core.guidance import SmoothSemantics

        term = SmoothSemantics(target=_target(restorer, target_image, "smooth semantics"), weight=weight, start=start,
                               stop=stop, n_steps=n_steps)
        return _chain(guidance, term)


class GuidanceLightness(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffGuidanceLightness",
            display_name="PGDiff Guidance: Lightness (BFR)",
            category=GUIDANCE_CATEGORY,
            description="Adds ‖gray(target) − gray(x̂₀)‖² (gray = mean of R, G, B): keeps the target's lightness while the "
                        "prior chooses the colours (colourisation: target = the grayscale input; old photos: the restorer).",
            inputs=[*_term_inputs(1.0, 1000.0, "the lightness loss"), _guidance_input(), *_target_inputs("Lightness target"),
                    io.Mask.Input("mask", optional=True,
                                  tooltip="Optional scratches (1 = damaged): left out of the loss, and the guidance gradient is zeroed there.")],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, weight: float, start: float, stop: float, n_steps: int, guidance=None, restorer=None,
                target_image=None, mask=None) -> io.NodeOutput:
        from bfr_core.guidance import Lightness

        term = Lightness(target=_target(restorer, target_image, "lightness"), mask=_mask(mask, "scratch mask"),
                         weight=weight, start=start, stop=stop, n_steps=n_steps)
        return _chain(guidance, term)


class GuidanceColorStatistics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffGuidanceColorStatistics",
            display_name="PGDiff Guidance: Colour Statistics (BFR)",
            category=GUIDANCE_CATEGORY,
            description="Adds ‖x̂₀ − AdaIN(x̂₀; μ, σ)‖²: gives the face target per-channel colour statistics, by default "
                        "the CelebA-HQ averages PGDiff uses, or those of reference images.",
            inputs=[*_term_inputs(0.05, 1000.0, "the colour loss (0.05 for colourisation, 0.5 for old photos, as released)"),
                    _guidance_input(),
                    io.Image.Input("reference", optional=True,
                                   tooltip="Optional images whose mean colour statistics are the target (averaged over the batch); "
                                           "without it, CelebA-HQ's averages.")],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, weight: float, start: float, stop: float, n_steps: int, guidance=None, reference=None) -> io.NodeOutput:
        from bfr_core.guidance import ColorStatistics

        window = dict(weight=weight, start=start, stop=stop, n_steps=n_steps)
        term = (ColorStatistics(**window) if reference is None
                else ColorStatistics.from_image(images.to_model(reference), average=True, **window))
        return _chain(guidance, term)


class GuidanceUnmaskedRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffGuidanceUnmaskedRegion",
            display_name="PGDiff Guidance: Unmasked Region (BFR)",
            category=GUIDANCE_CATEGORY,
            description="Adds ‖(y − x̂₀)·(1 − M)‖²: keeps the known pixels and lets the prior fill the holes M (inpainting). "
                        "The guidance gradient is zeroed inside the holes.",
            inputs=[io.Mask.Input("mask", tooltip="Holes to fill (1 = missing), e.g. painted in LoadImage's mask editor; resized to the prior's size."),
                    *_term_inputs(1.0, 1000.0, "the unmasked-region loss"), _guidance_input(),
                    io.Image.Input("target_image", optional=True,
                                   tooltip="The known pixels; without it, the sampler's input image.")],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, mask: torch.Tensor, weight: float, start: float, stop: float, n_steps: int, guidance=None,
                target_image=None) -> io.NodeOutput:
        from bfr_core.guidance import UnmaskedRegion

        term = UnmaskedRegion(mask=_mask(mask, "inpainting mask"), target=_target(None, target_image, "unmasked region"),
                              weight=weight, start=start, stop=stop, n_steps=n_steps)
        return _chain(guidance, term)


class GuidanceIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffGuidanceIdentity",
            display_name="PGDiff Guidance: Identity Reference (BFR)",
            category=GUIDANCE_CATEGORY,
            description="Adds an ArcFace identity loss towards a reference photo of the same person (reference-based "
                        "restoration): ‖A(x̂₀) − A(ref)‖² (released), or −cos(A(x̂₀), A(ref)) (the paper's form).",
            inputs=[ARCFACE.Input("arcface", tooltip="From Load ArcFace."),
                    io.Image.Input("reference", tooltip="Aligned face crop(s) of the same person: one for every face, or one per face."),
                    io.Combo.Input("metric", options=["mse", "cosine"], default="mse",
                                   tooltip="mse: squared embedding distance (released default, weight 25); cosine: the paper's form (weight 1e4)."),
                    *_term_inputs(25.0, 100000.0, "the identity loss"), _guidance_input()],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, arcface: torch.nn.Module, reference: torch.Tensor, metric: str, weight: float, start: float,
                stop: float, n_steps: int, guidance=None) -> io.NodeOutput:
        from bfr_core.guidance import IdentityReference

        term = IdentityReference(arcface=arcface, reference=images.to_model(reference), metric=metric, weight=weight,
                                 start=start, stop=stop, n_steps=n_steps)
        return _chain(guidance, term)


def _load_vgg(choice: str) -> torch.nn.Module:
    """The VGG16 features a weight choice names: torchvision's ImageNet file (from a model folder or torchvision's own
    download cache, else downloaded into models/bfr; verified like every registry file) or a file in the model folders."""
    from bfr_core.pipelines.pgdiff import vgg_features
    from bfr_core.weights import KNOWN, open_checkpoint, resolve
    from bfr_core.weights.fetch import find_local

    spec = choice.removesuffix(" (auto-download)")
    filename = KNOWN[VGG_ID].filename
    torch_cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if spec in (VGG_ID, filename) and find_local(filename) is None and torch_cache.is_file():
        spec = str(torch_cache)  # torchvision's own download: no second copy
    elif spec not in KNOWN:
        spec = _comfy.model_path(spec) or spec
    path, entry = resolve(spec, dest_dir=_comfy.download_dir())
    log.info("BFR: perceptual guidance VGG from %s. Licence: %s", path,
             entry.licence_notice() if entry else "unknown (a local file)")
    return vgg_features(open_checkpoint(path).tensors)


class GuidancePerceptual(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffGuidancePerceptual",
            display_name="PGDiff Guidance: Perceptual (BFR)",
            category=GUIDANCE_CATEGORY,
            description="Adds Σ‖φ(x̂₀) − φ(target)‖² over VGG16 relu1_2, relu2_2, relu3_3 and relu4_3 features (paper §4.6; "
                        "not in the released code). Uses torchvision's ImageNet VGG16 weights, downloaded into models/bfr on "
                        "first use.",
            inputs=[io.Combo.Input("vgg", options=weight_choices([VGG_ID]),
                                   tooltip="VGG16 weights in torchvision's layout: torchvision's vgg16-397923af.pth (found in a model "
                                           "folder or torchvision's download cache, else downloaded from download.pytorch.org "
                                           "into models/bfr), or a file in models/bfr."),
                    *_term_inputs(0.01, 1000.0, "the perceptual loss"), _guidance_input(), *_target_inputs("Target")],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, vgg: str, weight: float, start: float, stop: float, n_steps: int, guidance=None, restorer=None,
                target_image=None) -> io.NodeOutput:
        from bfr_core.guidance import Perceptual

        net = _cached("vgg", choice_key(vgg), lambda: _load_vgg(vgg))
        term = Perceptual(vgg=net, target=_target(restorer, target_image, "perceptual"), weight=weight, start=start,
                          stop=stop, n_steps=n_steps)
        return _chain(guidance, term)


class GuidanceGAN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffGuidanceGAN",
            display_name="PGDiff Guidance: GAN (BFR)",
            category=GUIDANCE_CATEGORY,
            description="Adds Σ softplus(−D(x̂₀)), the non-saturating GAN loss under a face discriminator (paper §4.6; not in "
                        "the released code): pushes x̂₀ towards what D finds realistic. D is VSPBFR's 512 px StyleGAN2 "
                        "discriminator (the 'd' of its restoration checkpoint, MIT).",
            inputs=[io.Combo.Input("discriminator", options=weight_choices(["vspbfr-restoration-net"]),
                                   tooltip="A checkpoint holding VSPBFR's StyleGAN2 discriminator: restoration_net.pt (its 'd' "
                                           "weights; the same file Load VSPBFR uses) or a file with those weights alone."),
                    *_term_inputs(0.01, 1000.0, "the GAN loss"), _guidance_input()],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, discriminator: str, weight: float, start: float, stop: float, n_steps: int,
                guidance=None) -> io.NodeOutput:
        from bfr_core.guidance import Adversarial

        net = _cached("discriminator", choice_key(discriminator), lambda: _frozen(discriminator, "vspbfr_discriminator"))
        return _chain(guidance, Adversarial(discriminator=net, weight=weight, start=start, stop=stop, n_steps=n_steps))


class TaskPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffTaskPreset",
            display_name="PGDiff Task Preset (BFR)",
            category=GUIDANCE_CATEGORY,
            description=("PGDiff's released guidance for a task, with its weights, update rule and scale: restoration "
                         "(smooth semantics, classic, 0.1), colorization (lightness + colour statistics, dynamic per-channel, "
                         "0.01), inpainting (unmasked region, dynamic global, 0.01), old photo restoration (restorer's "
                         "lightness outside scratches + colour statistics, dynamic per-channel, 0.002), reference-based "
                         "restoration (smooth semantics + ArcFace identity, classic, 0.05)."),
            inputs=[
                io.Combo.Input("task", options=list(TASKS), default="restoration", tooltip="The task whose released guidance to use."),
                io.Int.Input("n_steps", default=1, min=1, max=20,
                             tooltip="Gradient steps per sampler step inside the multi-step window (the first 30 % of the schedule); 1 as released."),
                _guidance_input(),
                PGDIFF_RESTORER.Input("restorer", optional=True,
                                      tooltip="From Load PGDiff Restorer: needed by restoration, old photo and reference-based restoration."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Inpainting: the holes (1 = missing; required). Old photos: the scratches (optional)."),
                ARCFACE.Input("arcface", optional=True, tooltip="From Load ArcFace: needed by reference-based restoration."),
                io.Image.Input("reference", optional=True,
                               tooltip="Reference-based restoration: an aligned photo of the same person (required)."),
                io.Image.Input("color_reference", optional=True,
                               tooltip="Colorization and old photos: images whose colour statistics to match (default: CelebA-HQ's)."),
            ],
            outputs=[GUIDANCE.Output("guidance_out", display_name="GUIDANCE")],
        )

    @classmethod
    def execute(cls, task: str, n_steps: int, guidance=None, restorer=None, mask=None, arcface=None, reference=None,
                color_reference=None) -> io.NodeOutput:
        from bfr_core.guidance import presets

        given = {"restorer": restorer, "mask": mask, "arcface": arcface, "reference": reference, "color_reference": color_reference}
        name, needs, uses = TASKS[task]
        missing = [k for k in needs if given[k] is None]
        if missing:
            raise InputError(f"the {task} preset needs: {', '.join(missing)}; connect them to the preset node.")
        unused = [k for k, v in given.items() if v is not None and k not in needs + uses]
        if unused:
            log.warning("BFR: the %s preset does not use %s", task, ", ".join(unused))
        color = None if color_reference is None else images.to_model(color_reference)
        if name == "restoration":
            g = presets.restoration(restorer, n_steps=n_steps)
        elif name == "colorization":
            g = presets.colorization(color_reference=color, n_steps=n_steps)
        elif name == "inpainting":
            g = presets.inpainting(_mask(mask, "inpainting mask"), n_steps=n_steps)
        elif name == "old_photo_restoration":
            g = presets.old_photo_restoration(restorer, _mask(mask, "scratch mask"), color_reference=color, n_steps=n_steps)
        else:
            g = presets.ref_restoration(restorer, arcface, images.to_model(reference), n_steps=n_steps)
        if guidance is not None:  # terms chained before the preset are kept, after its own; its rule wins
            g = g.add(*_as_guidance(guidance).terms)
        return io.NodeOutput(g)


# ------------------------------------------------------------------------------------------------ sampling

def _sampler_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("sampler", options=["ddpm", "ddim"], default="ddpm",
                       tooltip="ddpm: ancestral sampling over the respaced schedule (released); ddim: deterministic DDIM steps "
                               "with the same guidance (the released DDIM path cannot run with guidance)."),
        io.Int.Input("steps", default=100, min=2, max=1000,
                     tooltip="Respaced steps of the 1000-step schedule (PGDiff's ddpmK: every k-th step). 1000 is the "
                             "released setting, 100 is about 10× faster with little loss; the multi-step window follows."),
        io.Float.Input("scale", default=0.0, min=0.0, max=10.0, step=0.0005,
                       tooltip="Guidance scale s. 0 keeps the guidance's own: a preset's released value (restoration 0.1, "
                               "colorization 0.01, inpainting 0.01, old photo 0.002, reference-based 0.05), 0.1 for term chains."),
        io.Combo.Input("update", options=list(UPDATE_CHOICES), default="from guidance",
                       tooltip="How the gradient corrects each step: classic μ − sΣg (restoration, reference), or the dynamic scale "
                               "s·‖x_t − x'‖/‖g‖ with norms over each image (inpainting) or each colour channel (colorization, "
                               "old photos). 'from guidance' keeps the preset's (classic for term chains)."),
    ]


def _configure(prior: "PGDiffPipeline", sampler: str, steps: int, scale: float, update: str, **changes) -> "PGDiffPipeline":
    return prior.replace(sampler=sampler, steps=steps, scale=scale or None, update=UPDATE_CHOICES[update], **changes)


class PartialGuidanceSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPartialGuidanceSampler",
            display_name="Partial Guidance Sampler (BFR)",
            category=CATEGORY,
            description="Samples faces from the PGDiff prior under partial guidance: at every step the guidance losses on the "
                        "predicted clean face x̂₀ correct the step. The preview shows x̂₀. Crops are resized to the prior's size.",
            inputs=[
                PGDIFF_PRIOR.Input("prior", tooltip="From Load PGDiff Face Prior."),
                io.Image.Input("image", tooltip="Aligned low-quality face crops (e.g. from FaceDetectCrop): the input y of the guidance."),
                GUIDANCE.Input("guidance", tooltip="From a task preset or a chain of guidance term nodes."),
                *_sampler_inputs(),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Start noise and step noise. Every face has its own random stream (the first face with seed s "
                                     "follows the released sampler with seed s)."),
                io.Int.Input("batch_size", default=4, min=1, max=256,
                             tooltip="Faces sampled together; lower it if the GPU runs out of memory. Every face has its own "
                                     "random stream, so the batch size never changes a result."),
            ],
            outputs=[io.Image.Output("restored", display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, prior: "PGDiffPipeline", image: torch.Tensor, guidance: "CompositeGuidance", sampler: str, steps: int,
                scale: float, update: str, seed: int, batch_size: int) -> io.NodeOutput:
        pipe = _configure(prior, sampler, steps, scale, update)
        faces, alpha = crops_to_model(image, pipe.size)
        g = pipe.guidance_for(guidance)
        with torch.inference_mode(False):  # placing weights on the GPU under inference mode would freeze them
            pipe.device = _comfy.load_on_device(*pipe.modules(g))
            progress = _comfy.progress(pipe.num_steps * -(-faces.shape[0] // batch_size), preview=True)
            out = pipe(faces, seed, guidance=guidance, batch_size=batch_size, on_progress=progress.on_progress,
                       check_cancel=progress.check_cancel)
        return io.NodeOutput(model_to_crops(out.cpu(), alpha))


class PGDiffFaceRestorer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BFRPGDiffFaceRestorer",
            display_name="PGDiff Face Restorer (BFR)",
            category=CATEGORY,
            description="Bundles the prior, the guidance and the sampler settings into a restorer for Restore Faces (which "
                        "gives the seed and the batch size; every face has its own random stream, so the batch size never "
                        "changes a result). Without a guidance it uses the restoration preset.",
            inputs=[
                PGDIFF_PRIOR.Input("prior", tooltip="From Load PGDiff Face Prior."),
                *_sampler_inputs(),
                PGDIFF_RESTORER.Input("restorer", optional=True,
                                      tooltip="From Load PGDiff Restorer: the smooth-semantics target of the restoration preset "
                                              "(without it, and without a guidance, samples are pulled towards the degraded crops)."),
                GUIDANCE.Input("guidance", optional=True,
                               tooltip="Another guidance instead of the restoration preset; per-face images or masks must have "
                                       "one entry per detected face (or one for all)."),
            ],
            outputs=[PGDIFF.Output("pgdiff", display_name="PGDIFF")],
        )

    @classmethod
    def execute(cls, prior: "PGDiffPipeline", sampler: str, steps: int, scale: float, update: str, restorer=None,
                guidance=None) -> io.NodeOutput:
        if guidance is not None and restorer is not None:
            log.warning("BFR: PGDiff Face Restorer: with a guidance connected its restorer input is not used; connect the "
                        "restorer to the guidance's term or preset node instead.")
        return io.NodeOutput(_configure(prior, sampler, steps, scale, update, restorer=restorer, guidance=guidance))


NODES = [PGDiffPriorLoader, PGDiffRestorerLoader, ArcFaceLoader, TaskPreset, GuidanceSmoothSemantics, GuidanceLightness,
         GuidanceColorStatistics, GuidanceUnmaskedRegion, GuidanceIdentity, GuidancePerceptual, GuidanceGAN,
         PartialGuidanceSampler, PGDiffFaceRestorer]

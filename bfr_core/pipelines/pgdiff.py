"""PGDiff: restore aligned face crops by sampling DifFace's face DDPM under partial guidance.

``restore`` ties the pieces together: the ε/learned-variance UNet (:mod:`bfr_core.models.adm_unet`),
a respaced schedule and sampler (:mod:`bfr_core.sampling`) and the guidance
(:mod:`bfr_core.guidance`, e.g. ``presets.restoration(restorer)``). Crops are (B, 3, H, W) in [-1, 1];
they are resized to the model's 512 px and back. The UNet runs without autograd; only the guidance
losses are differentiated, with respect to x̂₀.

Seeding: every face has its own random stream, from :func:`noise_generators`: face k of a request (its index in
the whole request, not in its chunk) draws its x_T and then every step's noise from a generator of (seed, k), so
the batch size never changes a result. Face 0 uses the seed itself, in the order of PGDiff's released sampler:
one face with seed s gets the released x_T and step noise of seed s (on the same device).

:class:`PGDiffPipeline` wraps the prior, the optional RRDB restorer, the guidance and the sampler settings
as a :class:`~bfr_core.pipelines.base.FaceRestorer` (restoration preset by default), sampling in chunks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..device import resolve_device, resolve_dtype
from ..errors import InputError, WeightsError
from ..guidance import CompositeGuidance, presets
from ..progress import Progress
from ..sampling import (
    DiffusionSchedule,
    IDDPMDenoiser,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
)
from ..seeding import make_generator, randn_batch
from .base import check_faces

log = logging.getLogger(__name__)

__all__ = ["SAMPLERS", "UPDATES", "make_schedule", "noise_generators", "restore", "PGDiffPipeline", "guidance_modules",
           "vgg_features"]

SAMPLERS = ("ddpm", "ddim")
NUM_TRAIN_STEPS = 1000
#: Update rules that :class:`PGDiffPipeline` can force on any guidance: name → (update, norm).
UPDATES = {"classic": ("classic", "global"), "dynamic-global": ("dynamic", "global"),
           "dynamic-channel": ("dynamic", "channel")}


@functools.lru_cache(maxsize=16)
def make_schedule(steps: int | str = NUM_TRAIN_STEPS, num_train_steps: int = NUM_TRAIN_STEPS) -> DiffusionSchedule:
    """The linear-β schedule respaced to ``steps``.

    An int K uses PGDiff's ``ddpmK`` rule (every k-th step from 0) when an integer stride gives exactly
    K steps, otherwise K evenly spread steps; strings are passed to
    :func:`~bfr_core.sampling.space_timesteps` (``"ddpm100"``, ``"50,25"``...). Cached, so that the
    coefficient tables stay on the device between runs.
    """
    base = DiffusionSchedule.linear(num_train_steps)
    if isinstance(steps, int) and not isinstance(steps, bool):
        if not 2 <= steps <= num_train_steps:
            raise InputError(f"steps must be between 2 and {num_train_steps}, got {steps}.")
        try:
            keep = space_timesteps(num_train_steps, f"ddpm{steps}")
        except InputError:
            keep = space_timesteps(num_train_steps, steps)
    else:
        keep = space_timesteps(num_train_steps, str(steps))
    return base.respace(keep)


def noise_generators(seed: int, n: int, device: torch.device | str = "cpu", first_index: int = 0) -> list[torch.Generator]:
    """One generator per face for faces ``first_index`` … ``first_index + n − 1`` of a request: face 0 uses ``seed``
    itself (the released sampler's stream), face k > 0 the stream ``"pgdiff/k"`` of the seed."""
    return [make_generator(seed, device, stream=f"pgdiff/{k}" if k else "") for k in range(first_index, first_index + n)]


def _autocast(device: torch.device, dtype: torch.dtype | None, model_dtype: torch.dtype):
    if dtype is None or dtype == model_dtype or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _autograd_ready(guidance: CompositeGuidance) -> CompositeGuidance:
    """The guidance with its tensors usable by autograd (called outside inference mode).

    Tensors made under ``torch.inference_mode()`` (ComfyUI runs every node under it) cannot be saved for backward,
    so they are cloned; a network the gradient flows through (ArcFace, VGG, a discriminator; targets run without
    autograd) must have been loaded outside it.
    """
    terms = []
    for term in guidance.terms:
        changes = {}
        for f in dataclasses.fields(term):
            value = getattr(term, f.name)
            if isinstance(value, torch.Tensor) and value.is_inference():
                changes[f.name] = value.clone()
            elif (isinstance(value, nn.Module) and f.name != "target"
                  and any(p.is_inference() for p in value.parameters())):
                raise InputError(f"{term.name} guidance: the {f.name} network was loaded under torch.inference_mode(), so no "
                                 "gradient can flow through it; load it under torch.inference_mode(False).")
        terms.append(term.replace(**changes) if changes else term)
    return guidance.replace(terms=tuple(terms))


@torch.inference_mode(False)  # the guidance needs autograd, also when the caller runs under inference mode
def restore(unet: nn.Module, lq: torch.Tensor, guidance: CompositeGuidance | None, *, steps: int | str = NUM_TRAIN_STEPS,
            sampler: str = "ddpm", eta: float = 0.0, seed: int = 1234, first_index: int = 0, noise: torch.Tensor | None = None,
            dtype: torch.dtype | None = None, clip_denoised: bool = True, progress: Progress | None = None,
            callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Sample restored faces for ``lq`` (B, 3, H, W) in [-1, 1]; returns the same shape in [-1, 1].

    ``unet``: the DDPM (any module ``(x, t) -> [ε, v]``) on its device and dtype; guidance networks
    (restorer, ArcFace...) live in ``guidance`` on the same device. ``steps``: see :func:`make_schedule`.
    ``sampler``: ``"ddpm"`` (ancestral, as released) or ``"ddim"`` (``eta`` = 0 deterministic).
    ``seed``/``first_index``: face i of ``lq`` is face ``first_index + i`` of the request and draws its x_T and step
    noise from its own generator (:func:`noise_generators`), so splitting a request into chunks changes nothing.
    ``noise``: an explicit x_T (B, 3, S, S) instead of the seeded one (the step noise still follows ``seed``). ``dtype``: run the networks under
    autocast in this precision (None: as they are); the diffusion maths stay float32.
    """
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if not isinstance(lq, torch.Tensor) or lq.dim() != 4 or lq.shape[1] != 3:
        raise InputError(f"the low-quality faces must be a (B, 3, H, W) tensor in [-1, 1], got {getattr(lq, 'shape', type(lq).__name__)}.")
    param = next(unet.parameters())
    device = param.device
    size = int(getattr(getattr(unet, "config", None), "image_size", lq.shape[-1]))
    in_size = tuple(lq.shape[-2:])
    y = lq.to(device=device, dtype=torch.float32)
    y = y.clone() if y.is_inference() else y
    if in_size != (size, size):
        y = F.interpolate(y, (size, size), mode="bilinear", antialias=True, align_corners=False)
    schedule = make_schedule(steps)
    shape = (lq.shape[0], 3, size, size)
    gens = noise_generators(seed, lq.shape[0], device, first_index)
    x = randn_batch(shape, gens, device=device)  # drawn even when replaced, so the step noise only depends on the seed
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise InputError(f"noise must have shape {shape}, got {tuple(noise.shape)}.")
        x = noise.to(device=device, dtype=torch.float32)
    bound = _autograd_ready(guidance).bind(y, x) if guidance is not None else None
    denoiser = IDDPMDenoiser(unet, clip_x0=clip_denoised)
    progress = progress or Progress(len(schedule))
    with _autocast(device, dtype, param.dtype):
        if sampler == "ddpm":
            out = sample_ddpm(denoiser, x, schedule, guidance=bound, generator=gens, progress=progress, callback=callback)
        else:
            out = sample_ddim(denoiser, x, schedule, eta=eta, guidance=bound, generator=gens, progress=progress, callback=callback)
    out = out.float().clamp(-1.0, 1.0)
    if in_size != (size, size):
        out = F.interpolate(out, in_size, mode="bilinear", antialias=True, align_corners=False).clamp(-1.0, 1.0)
    return out


def guidance_modules(guidance: CompositeGuidance | None) -> list[nn.Module]:
    """The networks a guidance runs (restorers, ArcFace, VGG, discriminators), each once, so that a host can place them."""
    found: dict[int, nn.Module] = {}
    for term in guidance.terms if guidance is not None else ():
        for f in dataclasses.fields(term):
            value = getattr(term, f.name)
            if isinstance(value, nn.Module):
                found.setdefault(id(value), value)
    return list(found.values())


def _per_image_tensors(term) -> list[tuple[str, torch.Tensor]]:
    """A term's tensors with a batch axis (images, masks, (B, 3) statistics); 1-D vectors are shared by all images."""
    return [(f.name, v) for f in dataclasses.fields(term)
            if isinstance(v := getattr(term, f.name), torch.Tensor) and v.dim() >= 2]


def _check_guidance_batch(guidance: CompositeGuidance, n: int) -> None:
    for term in guidance.terms:
        for name, value in _per_image_tensors(term):
            if value.shape[0] not in (1, n):
                raise InputError(f"{term.name} guidance: its {name} has batch {value.shape[0]} but {n} faces are sampled; "
                                 "give one (used for every face) or one per face.")


def _chunk_guidance(guidance: CompositeGuidance, n: int, lo: int, hi: int) -> CompositeGuidance:
    """The guidance of faces lo … hi−1: per-face tensors (batch n) are sliced, shared ones (batch 1) kept."""
    if (lo, hi) == (0, n):
        return guidance
    terms = []
    for term in guidance.terms:
        changes = {name: v[lo:hi] for name, v in _per_image_tensors(term) if v.shape[0] == n}
        terms.append(term.replace(**changes) if changes else term)
    return guidance.replace(terms=tuple(terms))


class PGDiffPipeline:
    """DifFace's face prior with PGDiff guidance and sampler settings on one device; a FaceRestorer.

    ``unet``: the ε/learned-variance ADM UNet (its ``config.image_size`` is the crop size). ``restorer``: PGDiff's
    RRDB network (or None); without ``guidance`` the restoration preset pulls the samples towards its output
    (towards the low-quality crops themselves when there is no restorer either). ``guidance``: any
    :class:`~bfr_core.guidance.CompositeGuidance` (a preset or a chain of terms); ``scale`` and ``update`` (a key of
    :data:`UPDATES`) override its own when not None. ``steps``/``sampler``/``eta``: see :func:`restore`.

    Seeding: faces are sampled ``batch_size`` at a time, and face k of a call draws x_T and every step's noise from
    its own generator of (seed, k) (see :func:`restore`), so, as with the other restorers, ``batch_size`` (and
    Restore Faces' out-of-memory back-off) never changes a result. Face 0 with seed s follows the released sampler
    with seed s. DDIM with eta 0 draws only x_T.
    """

    name = "pgdiff"

    def __init__(self, unet: nn.Module, restorer: nn.Module | None = None, guidance: CompositeGuidance | None = None, *,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = "auto",
                 steps: int | str = 100, sampler: str = "ddpm", eta: float = 0.0, scale: float | None = None,
                 update: str | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.size = int(getattr(getattr(unet, "config", None), "image_size", 512))
        self.restorer = restorer
        self.guidance = guidance
        self.steps, self.sampler, self.eta, self.scale, self.update = steps, sampler, eta, scale, update
        self._validate()
        for module in self.modules():
            module.to(self.device).eval().requires_grad_(False)

    def _validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        make_schedule(self.steps)  # raises on a bad step count
        if self.update is not None and self.update not in UPDATES:
            raise InputError(f"unknown guidance update {self.update!r}; choose one of {', '.join(UPDATES)} (or None: the guidance's own).")
        if self.scale is not None and not self.scale >= 0:
            raise InputError(f"the guidance scale must be ≥ 0, got {self.scale}.")
        if self.guidance is not None and not isinstance(self.guidance, CompositeGuidance):
            raise InputError(f"guidance must be a CompositeGuidance (a preset or a chain of terms), got {type(self.guidance).__name__}.")

    def replace(self, **changes) -> "PGDiffPipeline":
        """A copy with other settings (``restorer``, ``guidance``, ``steps``, ``sampler``, ``eta``, ``scale``, ``update``),
        sharing the networks."""
        allowed = {"restorer", "guidance", "steps", "sampler", "eta", "scale", "update"}
        if set(changes) - allowed:
            raise TypeError(f"PGDiffPipeline.replace() takes {sorted(allowed)}, got {sorted(set(changes) - allowed)}")
        new = copy.copy(self)
        for key, value in changes.items():
            setattr(new, key, value)
        new._validate()
        return new

    @property
    def num_steps(self) -> int:
        """Sampler steps per chunk (progress steps)."""
        return len(make_schedule(self.steps))

    def guidance_for(self, guidance: CompositeGuidance | None = None) -> CompositeGuidance:
        """The guidance a run uses: ``guidance``, else this pipeline's, else the restoration preset; with the overrides."""
        g = guidance if guidance is not None else self.guidance
        if g is None:
            g = presets.restoration(self.restorer)
        elif not isinstance(g, CompositeGuidance):
            raise InputError(f"guidance must be a CompositeGuidance (a preset or a chain of terms), got {type(g).__name__}.")
        changes = {}
        if self.scale is not None:
            changes["scale"] = float(self.scale)
        if self.update is not None:
            changes["update"], changes["norm"] = UPDATES[self.update]
        return g.replace(**changes) if changes else g

    def modules(self, guidance: CompositeGuidance | None = None) -> list[nn.Module]:
        """The prior and every network the guidance runs (for ComfyUI's memory manager); a restorer the guidance
        does not use is left where it is."""
        nets = {id(self.unet): self.unet}
        for m in guidance_modules(self.guidance_for(guidance)):
            nets.setdefault(id(m), m)
        return list(nets.values())

    def __call__(self, faces: torch.Tensor, seed: int = 0, *, guidance: CompositeGuidance | None = None,
                 batch_size: int | None = None, on_progress: Callable | None = None,
                 check_cancel: Callable[[], None] | None = None, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Sample restored faces for aligned crops (B, 3, size, size) in [-1, 1], ``batch_size`` at a time (default: all).

        Per-face tensors in the guidance (masks, target or reference images of batch B) follow their faces into
        the chunks; batch-1 ones are shared. Returns (B, 3, size, size) in [-1, 1], float32.
        """
        faces = check_faces(faces, self.size, "PGDiff", self.device)
        n = faces.shape[0]
        if n == 0:
            return faces.clone()
        g = self.guidance_for(guidance)
        _check_guidance_batch(g, n)
        chunk = max(1, int(batch_size or n))
        progress = Progress(self.num_steps * -(-n // chunk), on_progress, check_cancel)
        out = []
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            out.append(restore(self.unet, faces[lo:hi], _chunk_guidance(g, n, lo, hi), steps=self.steps,
                               sampler=self.sampler, eta=self.eta, seed=seed, first_index=lo,
                               dtype=self.dtype, progress=progress, callback=callback))
        return torch.cat(out)

    def restore_faces(self, faces: torch.Tensor, seed: int = 0, *, batch_size: int | None = None,
                      on_progress: Callable | None = None, check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """The :class:`~bfr_core.pipelines.base.FaceRestorer` interface, with this pipeline's guidance and settings."""
        return self(faces, seed, batch_size=batch_size, on_progress=on_progress, check_cancel=check_cancel)


def vgg_features(state_dict: Mapping[str, torch.Tensor]) -> nn.Sequential:
    """torchvision's VGG ``features`` stack rebuilt from a state dict, for the perceptual guidance.

    Keys are ``features.<i>.weight``/``.bias`` (torchvision's ``vgg16-397923af.pth``) or ``<i>.weight``. Layer i is
    a 3×3 convolution where the checkpoint has weights for it, a ReLU right after a convolution and a 2×2 max-pool
    otherwise, which is torchvision's layout, so the layer indices of :class:`~bfr_core.guidance.Perceptual` keep
    their meaning; widths come from the shapes. Written here rather than taken from torchvision because its
    builder fixes the widths (tests use a narrow VGG). Stops after the last convolution's ReLU; frozen, eval mode.
    """
    sd = {k.removeprefix("features."): v for k, v in state_dict.items() if not k.startswith("classifier.")}
    sd = {k: v for k, v in sd.items() if k.split(".")[0].isdigit()}
    convs = sorted({int(k.split(".")[0]) for k in sd if k.endswith(".weight") and sd[k].dim() == 4})
    if not convs:
        raise WeightsError("this file holds no VGG convolution weights (features.<i>.weight); use torchvision's "
                           "ImageNet VGG16, vgg16-397923af.pth.")
    layers: list[nn.Module] = []
    after_conv, width = False, None
    for i in range(convs[-1] + 2):
        if i in convs:
            w = sd[f"{i}.weight"]
            if width is not None and w.shape[1] != width:
                raise WeightsError(f"the VGG weights do not fit torchvision's layout: layer {i} takes {w.shape[1]} "
                                   f"channels after a layer giving {width}.")
            width = w.shape[0]
            layers.append(nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2, bias=f"{i}.bias" in sd))
        else:
            layers.append(nn.ReLU() if after_conv else nn.MaxPool2d(2, 2))
        after_conv = i in convs
    features = nn.Sequential(*layers)
    try:
        features.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"the VGG weights do not fit torchvision's layout: {str(e).splitlines()[0]}") from e
    return features.eval().requires_grad_(False)

"""The built-in compact restorer: lq → hq in one pass, trained on random crops degraded after cropping.

The stage makes its own low-quality inputs: it cuts a random square of each HQ face (``crop``; the
whole face when 0 or in validation) and degrades that crop with a :mod:`bfr_core.degrade` preset.
Cropping first keeps the degradation's cost proportional to the crop (a 41-tap blur of whole 512²
faces costs more than the network on CPU); the blur, scale and noise are in pixels of the 512² face
either way, so the crops see exactly the degradations a whole face would. ``data.degradation`` must be
``none`` for this stage.

The dataset type ``face_folder_held_out`` keeps a fixed list of faces (:data:`trainer.compact_eval.HELD_OUT`)
out of training and validates on them, the faces :mod:`trainer.compact_eval` reports the model's quality on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError, DataConfig, check
from ..data import FaceFolder, list_faces
from ..registry import DATASETS
from . import StepContext, register_stage

COMPACT_LICENCE_HINT = (
    "The compact restorer's code is MIT; weights trained on FFHQ (CC BY-NC-SA 4.0) or CelebA-HQ (non-commercial "
    "research) carry those terms."
)


@dataclass
class CompactOptions:
    crop: int = 256  # side of the random training crops of the data.size faces (0: whole faces); multiple of 32
    degradation: str = "gfpgan"  # a bfr_core.degrade preset
    degradation_options: dict[str, Any] = field(default_factory=lambda: {"scale": [2.0, 10.0]})

    def __post_init__(self) -> None:
        check(self.crop >= 0 and self.crop % 32 == 0, "stage_options.crop must be 0 or a positive multiple of 32")
        self.degrade_fn()  # a bad preset or override fails here, before any work

    def degrade_fn(self):
        from bfr_core.degrade import training_degradation
        from bfr_core.errors import InputError

        try:
            return training_degradation(self.degradation, **self.degradation_options)
        except InputError as e:
            raise ConfigError(f"stage_options.degradation / degradation_options: {e}") from None


def _setup(ctx: StepContext):
    return ctx.options.degrade_fn()


def _crop(ctx: StepContext, hq: torch.Tensor) -> torch.Tensor:
    """One random crop position per batch (all faces are aligned the same way, so positions vary enough)."""
    size = ctx.options.crop
    h, w = hq.shape[-2:]
    if not ctx.training or size == 0 or size >= min(h, w):
        return hq
    gen = ctx.generator
    top, left = (int(v) for v in torch.randint(0, min(h, w) - size + 1, (2,), generator=gen, device=gen.device).tolist())
    return hq[..., top:top + size, left:left + size]


def _pair(ctx: StepContext, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if "lq" in batch:
        raise ConfigError("the compact stage degrades its crops itself: set data.degradation: none")
    hq = _crop(ctx, batch["hq"].float())
    lq = ctx.state((hq + 1) / 2, ctx.generator).clamp(0, 1) * 2 - 1
    return hq, lq


def _sample(ctx: StepContext, batch: dict) -> dict:
    hq, lq = _pair(ctx, batch)
    return {"degraded": lq, "restored": ctx.models["restorer"](lq).clamp(-1, 1), "target": hq}


@register_stage("compact_restorer", options=CompactOptions, models=("restorer",), sample=_sample, setup=_setup,
                needs_lq=False, licence_hint=COMPACT_LICENCE_HINT)
def compact_step(ctx: StepContext, batch: dict) -> dict:
    """The built-in compact restorer: a small U-Net mapping degraded faces to clean ones in one pass."""
    hq, lq = _pair(ctx, batch)
    pred = ctx.models["restorer"](lq)
    loss, parts = ctx.losses(pred, hq)
    ctx.backward(loss)
    return {"loss": loss, **parts}


@DATASETS.register("face_folder_held_out")
def build_held_out(cfg: DataConfig, seed: int, degrade_in_workers) -> tuple[FaceFolder, FaceFolder]:
    """Faces under ``data.root`` minus the fixed evaluation faces, which become the validation set."""
    from ..compact_eval import HELD_OUT

    files = list_faces(cfg.root)
    val = [f for f in files if f[0].name in HELD_OUT]
    train = [f for f in files if f[0].name not in HELD_OUT]
    if not train:
        raise ConfigError(f"data.root: every face under {cfg.root} is one of the held-out evaluation faces")
    if cfg.max_images is not None:
        train = train[: cfg.max_images]
    cache = cfg.cache == "memory"
    return (FaceFolder(train, cfg.size, seed, "train", degrade_in_workers, cfg.hflip, cache, cfg.augment),
            FaceFolder(val, cfg.size, seed, "val", degrade_in_workers, False, cache))

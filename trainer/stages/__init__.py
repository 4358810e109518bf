"""Training stages: each is one small step function plus a few declarations, registered by name.

A step function handles one micro-batch::

    def step(ctx: StepContext, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred = ctx.models["restorer"](...)
        loss, parts = ctx.losses(pred, batch["hq"])
        ctx.backward(loss)                 # scaled for gradient accumulation; a no-op in validation
        return {"loss": loss, **parts}     # scalars to log (kept on the device, averaged every log.every)

The trainer owns everything else: optimisers, accumulation, clipping, EMA, checkpoints, logging,
validation (the same step function under ``torch.no_grad`` gives the validation loss) and export.
Stages with several optimisers (GANs) call ``ctx.optimizer_step("d")`` themselves between phases.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..config import ConfigError, TrainConfig
from ..registry import STAGES

StepFn = Callable[["StepContext", dict], dict]
SampleFn = Callable[["StepContext", dict], dict]
SetupFn = Callable[["StepContext"], Any]


@dataclass
class StepContext:
    """What a step function may use. ``models`` are the prepared (possibly DDP-wrapped) modules."""

    models: dict[str, nn.Module]
    options: Any
    losses: Any
    device: torch.device
    seed: int
    step: int = 0  # optimiser steps done before this one
    micro: int = 0  # micro-batch number of this process
    training: bool = True
    generator: torch.Generator | None = None
    state: Any = None  # what the stage's setup() returned (schedules, frozen helpers)
    accum: int = 1
    _backward: Callable[[torch.Tensor], None] | None = None
    _optimizer_step: Callable[[str], None] | None = None
    stepped: set[str] = field(default_factory=set)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss`` (divided by the accumulation count). No-op when validating."""
        if self.training and self._backward is not None:
            self._backward(loss / self.accum)

    def optimizer_step(self, name: str) -> None:
        """Step the optimiser of model ``name`` now (GAN phases); the trainer then skips it at the end."""
        if not self.training:
            return
        if self.accum != 1:
            raise ConfigError("stages that step optimisers themselves need grad_accum=1")
        self._optimizer_step(name)
        self.stepped.add(name)

    def unwrap(self, name: str) -> nn.Module:
        """The bare module behind a prepared one (for attribute access such as ``.config``)."""
        m = self.models[name]
        return getattr(m, "module", m)

    @staticmethod
    @contextlib.contextmanager
    def frozen(*modules: nn.Module):
        """Turn gradients off for ``modules`` inside the block (e.g. D during the G phase)."""
        saved = [[p.requires_grad for p in m.parameters()] for m in modules]
        try:
            for m in modules:
                m.requires_grad_(False)
            yield
        finally:
            for m, flags in zip(modules, saved):
                for p, f in zip(m.parameters(), flags):
                    p.requires_grad_(f)


@dataclass(frozen=True)
class Stage:
    """A registered training stage.

    ``models``: the slots the config must fill; ``trainable``: those given optimisers (the rest are
    frozen helpers); ``export``: the slot whose EMA weights are exported. ``options``: dataclass of
    ``stage_options``. ``setup(ctx)`` builds stage-wide helpers once (schedules, frozen networks).
    ``sample(ctx, batch)`` returns image columns for sample grids and validation metrics:
    ``{"degraded": ..., "restored": ..., "target": ...}`` (B, 3, H, W) in [-1, 1]; metrics are computed
    for ``restored`` (and ``degraded``) against ``target`` when those keys are present.
    ``needs_lq``: the data must provide degraded inputs (``data.degradation`` other than none).
    ``uses_losses``: the step calls ``ctx.losses`` (the configured list); False for fixed objectives.
    ``export_with``: frozen slots written into the export file beside the export slot, every model under its
    slot name as key prefix (as e4e checkpoints hold ``encoder.*`` and ``decoder.*``), for loaders that read
    both from one file.
    """

    name: str
    step: StepFn
    options: type
    models: tuple[str, ...]
    trainable: tuple[str, ...]
    export: str
    sample: SampleFn | None = None
    setup: SetupFn | None = None
    needs_lq: bool = True
    uses_losses: bool = True
    description: str = ""
    licence_hint: str = ""
    export_with: tuple[str, ...] = ()

    def check_config(self, cfg: TrainConfig) -> None:
        missing = [m for m in self.models if m not in cfg.models]
        extra = [m for m in cfg.models if m not in self.models]
        if missing or extra:
            raise ConfigError(
                f"models: stage {self.name!r} needs exactly the slots {', '.join(self.models)}"
                + (f"; missing {', '.join(missing)}" if missing else "") + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        for name in self.trainable:
            if cfg.models[name].frozen:
                raise ConfigError(f"models.{name}.frozen: stage {self.name!r} trains this model")
        bad = [n for n in cfg.optim_overrides if n not in self.trainable]
        if bad:
            raise ConfigError(f"optim_overrides: {', '.join(bad)} not trained by {self.name!r} "
                              f"(trained: {', '.join(self.trainable)})")
        if self.uses_losses and not cfg.losses:
            raise ConfigError(f"losses: stage {self.name!r} needs at least one loss term, e.g. [{{type: mse, weight: 1.0}}]")
        if not self.uses_losses and cfg.losses:
            raise ConfigError(f"losses: stage {self.name!r} has a fixed objective; remove the losses list")
        if self.needs_lq and cfg.data.degradation == "none":
            raise ConfigError(f"data.degradation: stage {self.name!r} trains on degraded inputs; choose a degradation")


def register_stage(name: str, *, options: type, models: tuple[str, ...], trainable: tuple[str, ...] | None = None,
                   export: str | None = None, sample: SampleFn | None = None, setup: SetupFn | None = None,
                   needs_lq: bool = True, uses_losses: bool = True, description: str = "",
                   licence_hint: str = "", export_with: tuple[str, ...] = ()) -> Callable[[StepFn], StepFn]:
    """Decorator registering ``step`` as the stage ``name``."""

    def deco(step: StepFn) -> StepFn:
        STAGES.register(name, Stage(
            name=name, step=step, options=options, models=models, trainable=trainable or models,
            export=export or models[0], sample=sample, setup=setup, needs_lq=needs_lq, uses_losses=uses_losses,
            description=description or (step.__doc__ or "").strip().split("\n")[0], licence_hint=licence_hint,
            export_with=export_with,
        ))
        return step

    return deco

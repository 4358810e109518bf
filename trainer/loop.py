"""The training loop shared by every stage: Accelerate, accumulation, EMA, checkpoints, logging, export.

Reproducibility contract: with the same config, seed and process count, a run that is stopped (even by
SIGKILL) and resumed from its latest state produces the same weights as one that never stopped. This
holds because nothing random depends on history that is not saved: the data order and every image's
augmentation are functions of (seed, micro-batch, index) (:mod:`trainer.data`), every step draws from a
generator seeded by (seed, process, micro-batch) and reseeds the global RNG (dropout) the same way, and model, optimiser, scheduler, EMA and global RNG
states are restored exactly (:mod:`trainer.checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bfr_core.errors import BFRError
from bfr_core.seeding import derive_seed, make_generator

from . import checkpoint as ckpt
from .config import ConfigError, OptimConfig, TrainConfig, dump, to_dict
from .data import align_photos, build_degradation, train_loader, val_batches
from .ema import EMA
from .losses import build_losses
from .models import architecture_of, build_model, enable_gradient_checkpointing
from .registry import DATASETS, STAGES
from .stages import Stage, StepContext
from .visual import save_grid

log = logging.getLogger(__name__)


class TrainingDiverged(BFRError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a run did: the last step, where its outputs are, its validation metrics and logged losses."""

    step: int
    output_dir: Path
    export_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str | None = None  # the signal name when a SIGTERM/SIGINT stopped the run
    out_of_time: bool = False  # max_minutes ended the run before max_steps (it was still exported)
    hub_commit: str | None = None


class StopSignals:
    """SIGTERM/SIGINT ask the loop to finish its step, save, and stop; a second Ctrl-C stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning("%s received: saving the training state after this step, then stopping", self.received)


def _mixed_precision(cfg: TrainConfig) -> str | None:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # `accelerate launch` / `accelerate config` decided
    if not cfg.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _tracker(cfg: TrainConfig) -> str | None:
    if cfg.log.tracker == "none":
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        log.warning("TensorBoard logging is off: the tensorboard package is not installed "
                    "(pip install tensorboard, or set log.tracker=none to silence this).")
        return None
    return "tensorboard"


def _set_determinism(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _optimizer(params, o: OptimConfig) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.type]
    return cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, o: OptimConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine":
            span = max(1, max_steps - o.warmup_steps)
            progress = min(1.0, (step - o.warmup_steps) / span)
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class Trainer:
    """One training run of one stage (build with a validated :class:`TrainConfig`, then :meth:`run`)."""

    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg
        self.stage: Stage = STAGES.get(cfg.stage)
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        _set_determinism(cfg.deterministic)
        self.tracker = _tracker(cfg)
        self.accelerator = acc = Accelerator(
            mixed_precision=_mixed_precision(cfg), cpu=cfg.cpu, log_with=self.tracker,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            step_scheduler_with_optimizer=False,
        )
        self.device = acc.device
        self.rank, self.world = acc.process_index, acc.num_processes
        if not acc.is_main_process:  # one copy of the progress messages is enough
            logging.getLogger("trainer").setLevel(logging.WARNING)
        self._log_handler: logging.Handler | None = None
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self._log_handler = logging.FileHandler(self.out / "train.log", encoding="utf-8")
            self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(self._log_handler)
        try:
            self._build()
        except BaseException:
            self._detach_log()
            raise

    def _build(self) -> None:
        """Models, EMA, optimisers, losses, data and the stage's helpers; then resume the latest state."""
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            ckpt.remove_partial(self.ckpt_dir)
        acc.wait_for_everyone()
        self.resume_from = ckpt.resolve_resume(self.ckpt_dir, cfg.checkpoint.resume)

        # Models: seeded initialisation per slot, so adding a slot never changes another's start.
        self.models: dict[str, nn.Module] = {}
        for name, spec in cfg.models.items():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(cfg.seed, f"init/{name}"))
                self.models[name] = build_model(spec, name)
        self.ema = None
        if cfg.ema.enabled:
            self.ema = EMA(self.models[self.stage.export], cfg.ema.decay, cfg.ema.start_step, cfg.ema.every).to(self.device)
        if cfg.gradient_checkpointing:
            for name in self.stage.trainable:
                n = enable_gradient_checkpointing(self.models[name])
                log.info("gradient checkpointing: %d blocks of %s", n, name)

        # Optimisers and schedules, one per trained model; everything device-related through Accelerate.
        self.optimizers, self.schedulers = {}, {}
        for name in self.stage.trainable:
            o = cfg.optim_for(name)
            model = self.models[name].train()
            self.optimizers[name] = _optimizer([p for p in model.parameters() if p.requires_grad], o)
            self.schedulers[name] = _scheduler(self.optimizers[name], o, cfg.max_steps)
        names = list(self.stage.trainable)
        prepared = acc.prepare(*[self.models[n] for n in names], *[self.optimizers[n] for n in names],
                               *[self.schedulers[n] for n in names])
        k = len(names)
        for i, n in enumerate(names):
            self.models[n], self.optimizers[n], self.schedulers[n] = prepared[i], prepared[k + i], prepared[2 * k + i]
        for name, model in self.models.items():
            if name not in self.stage.trainable:
                self.models[name] = model.to(self.device).eval().requires_grad_(False)

        self.losses = build_losses(cfg.losses, self.device) if self.stage.uses_losses else None
        self.loss_labels = self.losses.describe() if self.losses is not None else []

        # Data.
        self.degrade = build_degradation(cfg.data)
        if self.stage.needs_lq and self.degrade is None:
            raise ConfigError(f"stage {self.stage.name!r} needs degraded inputs; set data.degradation")
        in_workers = self.degrade if cfg.data.degrade_on == "worker" else None
        data_cfg = cfg.data
        if data_cfg.align == "detect":  # whole photos: align their faces once (main process), then read the crops
            aligned = self.out / "aligned"
            if acc.is_main_process:
                align_photos(data_cfg, aligned, self.device)
            acc.wait_for_everyone()
            data_cfg = dataclasses.replace(data_cfg, root=str(aligned))
        self.train_set, self.val_set = DATASETS.get(cfg.data.type)(data_cfg, cfg.seed, in_workers)

        self.ctx = StepContext(models=self.models, options=cfg.stage_options, losses=self.losses, device=self.device,
                               seed=cfg.seed, accum=cfg.grad_accum, _backward=acc.backward,
                               _optimizer_step=self._optimizer_step)
        self.ctx.state = self.stage.setup(self.ctx) if self.stage.setup is not None else None

        self.step = 0
        self.metrics: dict[str, float] = {}
        self.data_wait = 0.0  # seconds spent in next(loader) since the last log line
        self.history: list[dict[str, float]] = []
        if self.resume_from is not None:
            self._load(self.resume_from)

    # ------------------------------------------------------------------------------------- state

    def _load(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = ckpt.read_trainer_state(path)
        self._check_compatible(state)
        self.accelerator.load_state(str(path))
        if self.ema is not None:
            ema_file = path / ckpt.EMA_FILE
            if not ema_file.is_file():
                raise ConfigError(f"{path} holds no EMA weights but ema.enabled is true; set ema.enabled=false to resume it")
            self.ema.load_state_dict(load_file(str(ema_file)))
        self.step = int(state["step"])
        self.metrics = dict(state.get("metrics", {}))
        self._apply_configured_lr()
        log.info("resumed from %s (step %d)", path, self.step)

    def _apply_configured_lr(self) -> None:
        """Make a changed ``optim.lr`` take effect on resume.

        The saved scheduler brings back the learning rate the run started with, so without this a resume with
        ``optim.lr=…`` would silently keep the old rate. The schedule's factor at the current step still applies.
        """
        for name, sched in self.schedulers.items():
            inner = getattr(sched, "scheduler", sched)  # under Accelerate's wrapper
            lr = self.cfg.optim_for(name).lr
            if all(math.isclose(b, lr, rel_tol=1e-9) for b in inner.base_lrs):
                continue
            log.info("optim.lr of %s: %g in the saved state, %g in the config; going on with %g", name,
                     inner.base_lrs[0], lr, lr)
            inner.base_lrs = [lr] * len(inner.base_lrs)
            for group, factor in zip(inner.optimizer.param_groups, inner.lr_lambdas):
                group["initial_lr"] = lr
                group["lr"] = lr * factor(inner.last_epoch)

    def _check_compatible(self, state: dict[str, Any]) -> None:
        """Settings that change the data order or the random streams make an exact resume impossible."""
        old = state.get("config", {})
        new = to_dict(self.cfg)

        def built(models: dict) -> dict:  # what the models are, not where their first weights came from
            return {n: {k: v for k, v in m.items() if k not in ("init", "init_strict")} for n, m in (models or {}).items()}

        if old.get("stage") != new["stage"] or built(old.get("models")) != built(new["models"]):
            raise ConfigError(
                f"the training state in {self.ckpt_dir} is for stage {old.get('stage')!r} with other models; "
                "use another output_dir, or the config that made it."
            )
        changed = [k for k in ("seed", "batch_size", "grad_accum", "data", "stage_options") if old.get(k) != new[k]]
        if state.get("num_processes") != self.world:
            changed.append(f"number of processes ({state.get('num_processes')} → {self.world})")
        if changed:
            log.warning("resuming with changed settings (%s): the run continues, but not exactly as it would have "
                        "without the interruption", ", ".join(map(str, changed)))

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step, "micro_batches": self.step * self.cfg.grad_accum, "num_processes": self.world,
            "config": to_dict(self.cfg), "metrics": self.metrics, "saved_at": time.time(),
        }

    def save(self) -> Path:
        from safetensors.torch import save_file

        def extra(folder: Path) -> None:
            if self.ema is not None:
                save_file({k: v.contiguous() for k, v in self.ema.state_dict().items()}, str(folder / ckpt.EMA_FILE))

        return ckpt.save_state(self.accelerator, self.ckpt_dir, self.step, extra, self._trainer_state(),
                               self.cfg.checkpoint.keep_last)

    # ------------------------------------------------------------------------------------- steps

    def _optimizer_step(self, name: str) -> None:
        o = self.cfg.optim_for(name)
        if o.grad_clip is not None:
            self.accelerator.clip_grad_norm_(self.models[name].parameters(), o.grad_clip)
        self.optimizers[name].step()
        self.schedulers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)

    def _batch_to_device(self, batch: dict[str, Any], gen_stream: str) -> dict[str, Any]:
        out = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if self.degrade is not None and "lq" not in out:
            gen = make_generator(self.cfg.seed, self.device, stream=gen_stream)
            out["lq"] = self.degrade((out["hq"] + 1) / 2, gen).clamp(0, 1) * 2 - 1
        return out

    def _train_step(self, batches) -> dict[str, torch.Tensor]:
        ctx, acc, accum = self.ctx, self.accelerator, self.cfg.grad_accum
        ctx.step, ctx.training, ctx.stepped = self.step, True, set()
        sums: dict[str, torch.Tensor] = {}
        for k in range(accum):
            micro = self.step * accum + k
            t0 = time.perf_counter()
            raw = next(batches)
            self.data_wait += time.perf_counter() - t0
            batch = self._batch_to_device(raw, f"degrade/{self.rank}/{micro}")
            ctx.micro = micro
            ctx.generator = make_generator(self.cfg.seed, self.device, stream=f"step/{self.rank}/{micro}")
            # Layers that draw from the global RNG (dropout) get a stream of their own per micro-batch too.
            torch.manual_seed(derive_seed(self.cfg.seed, f"global/{self.rank}/{micro}"))
            with contextlib.ExitStack() as stack:
                if k < accum - 1:
                    for name in self.stage.trainable:
                        stack.enter_context(acc.no_sync(self.models[name]))
                stack.enter_context(acc.autocast())
                out = self.stage.step(ctx, batch)
            for key, value in out.items():
                v = value.detach().float()
                sums[key] = sums[key] + v if key in sums else v
        for name in self.stage.trainable:
            if name not in ctx.stepped:
                self._optimizer_step(name)
        self.step += 1
        if self.ema is not None:
            self.ema.update(acc.unwrap_model(self.models[self.stage.export]), self.step)
        return {k: v / accum for k, v in sums.items()}

    # ------------------------------------------------------------------------------ evaluation

    def _eval_models(self) -> dict[str, nn.Module]:
        """Unwrapped modules, with the EMA copy in the export slot (what gets exported is what is measured)."""
        models = {n: self.accelerator.unwrap_model(m) for n, m in self.models.items()}
        if self.ema is not None:
            models[self.stage.export] = self.ema.module
        return models

    @contextlib.contextmanager
    def _eval_mode(self):
        trained = [m for n, m in self.models.items() if n in self.stage.trainable]
        modes = [m.training for m in trained]
        try:
            for m in trained:
                m.eval()
            with torch.no_grad(), self.accelerator.autocast():
                yield
        finally:
            for m, mode in zip(trained, modes):
                m.train(mode)

    def _eval_ctx(self, stream: str, models: dict[str, nn.Module]) -> StepContext:
        return StepContext(models=models, options=self.cfg.stage_options, losses=self.losses,
                           device=self.device, seed=self.cfg.seed, step=self.step, training=False,
                           generator=make_generator(self.cfg.seed, self.device, stream=stream), state=self.ctx.state)

    def _sample_batch(self) -> dict[str, Any] | None:
        source = self.val_set if len(self.val_set) else self.train_set
        n = min(self.cfg.log.num_samples, len(source))
        if n == 0:
            return None
        return self._batch_to_device(next(val_batches(source, n, n)), "samples/degrade")

    def sample_grid(self) -> Path | None:
        """Save ``samples/step-XXXXXXXX.png`` (main process) and log it to the tracker."""
        if self.stage.sample is None or not self.accelerator.is_main_process:
            return None
        batch = self._sample_batch()
        if batch is None:
            return None
        with self._eval_mode():
            columns = self.stage.sample(self._eval_ctx("samples", self._eval_models()), batch)
        path = self.out / "samples" / f"{ckpt.state_name(self.step)}.png"
        grid = save_grid(columns, path)
        if self.tracker == "tensorboard":
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("samples/" + "|".join(columns), grid, self.step, dataformats="HWC")
        return path

    def validate(self) -> dict[str, float]:
        """Validation loss and image metrics of the exported (EMA) weights on the held-out faces."""
        if not self.accelerator.is_main_process or not len(self.val_set):
            return {}
        from bfr_core.metrics import psnr

        lpips = self._val_lpips()
        totals: dict[str, float] = {}
        count = 0
        models = self._eval_models()
        with self._eval_mode():
            for i, batch in enumerate(val_batches(self.val_set, self.cfg.val.batch_size)):
                batch = self._batch_to_device(batch, f"val/degrade/{i}")
                b = batch["hq"].shape[0]
                values: dict[str, torch.Tensor] = {}
                for k, v in self.stage.step(self._eval_ctx(f"val/loss/{i}", models), batch).items():
                    values[f"val/{k}"] = v.float().mean() * b
                if self.stage.sample is not None:
                    cols = self.stage.sample(self._eval_ctx(f"val/sample/{i}", models), batch)
                    if "restored" in cols and "target" in cols:
                        target = (cols["target"].float() + 1) / 2
                        for key in ("restored", "degraded"):
                            if key in cols:
                                img = (cols[key].float() + 1) / 2
                                values[f"val/psnr_{key}"] = psnr(img, target).sum()
                                if lpips is not None:
                                    values[f"val/lpips_{key}"] = lpips(img, target).sum()
                for k, v in values.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
                count += b
        metrics = {k: v / count for k, v in totals.items()}
        self.metrics = metrics
        return metrics

    def _val_lpips(self):
        if self.cfg.val.lpips == "off":
            return None
        from bfr_core.metrics import LPIPSMetric

        try:
            weights = None if self.cfg.val.lpips == "auto" else self.cfg.val.lpips
            return LPIPSMetric.load("alex", device=self.device, weights=weights)
        except BFRError as e:
            if self.cfg.val.lpips != "auto":
                raise
            if not getattr(self, "_lpips_warned", False):
                log.warning("validation LPIPS is off: %s", e)
                self._lpips_warned = True
            return None

    # ------------------------------------------------------------------------------------- run

    def _log(self, values: dict[str, float]) -> None:
        self.history.append({"step": self.step, **values})
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.step, **values}) + "\n")
        if self.tracker is not None:
            self.accelerator.log(values, step=self.step)

    def _describe(self) -> None:
        acc, cfg = self.accelerator, self.cfg
        sizes = ", ".join(f"{n}: {sum(p.numel() for p in acc.unwrap_model(m).parameters()):,}" for n, m in self.models.items())
        log.info("stage %s on %s × %d (%s precision), models %s", cfg.stage, self.device, self.world,
                 acc.mixed_precision, sizes)
        log.info("data: %d train / %d val images; batch %d × accumulation %d × %d processes; losses: %s",
                 len(self.train_set), len(self.val_set), cfg.batch_size, cfg.grad_accum, self.world,
                 ", ".join(self.loss_labels) or "stage objective")

    def _agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on every process when it is true on any (so that all of them stop at the same step);
        one collective for all flags."""
        if self.world > 1:
            t = torch.tensor([[1.0 if f else 0.0 for f in flags]], device=self.device)
            flags = tuple(bool(v) for v in self.accelerator.gather(t).amax(0) > 0)
        return flags

    def run(self, *, export: bool = True, push_to_hub: str | None = None) -> TrainResult:
        """Train to ``max_steps`` (or until a stop signal), save, then export and publish."""
        try:
            return self._run(export, push_to_hub)
        finally:
            self.close()

    def _run(self, export: bool, push_to_hub: str | None) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            (self.out / "config.yaml").write_text(dump(cfg), encoding="utf-8")
        if self.tracker is not None:
            acc.init_trackers(cfg.export.name or cfg.stage, config=_flat(to_dict(cfg)))
        self._describe()
        result = TrainResult(step=self.step, output_dir=self.out)
        loader = train_loader(self.train_set, cfg.data, cfg.batch_size, cfg.seed, self.rank, self.world,
                              self.step * cfg.grad_accum, pin_memory=self.device.type == "cuda")
        batches = iter(loader)
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=cfg.stage, dynamic_ncols=True,
                   disable=not (acc.is_main_process and cfg.log.progress_bar))
        sums: dict[str, torch.Tensor] = {}
        n_sum, t0, images_per_step = 0, time.perf_counter(), cfg.batch_size * cfg.grad_accum * self.world
        self.data_wait = 0.0
        saved_at = self.step
        deadline = None if cfg.max_minutes is None else time.monotonic() + 60.0 * cfg.max_minutes
        with StopSignals() as signals:
            while self.step < cfg.max_steps:
                out = self._train_step(batches)
                for k, v in out.items():
                    sums[k] = sums[k] + v if k in sums else v
                n_sum += 1
                bar.update(1)
                stop, late = self._agree(signals.received is not None,
                                         deadline is not None and time.monotonic() > deadline)
                if late and self.step < cfg.max_steps:
                    result.out_of_time = True
                    log.info("max_minutes (%g) reached at step %d of %d: validating, saving and exporting now",
                             cfg.max_minutes, self.step, cfg.max_steps)
                last = self.step == cfg.max_steps or result.out_of_time
                if self.step % cfg.log.every == 0 or last:
                    keys = list(sums)
                    means = acc.reduce(torch.stack([sums[k] / n_sum for k in keys]), "mean").tolist()
                    elapsed = time.perf_counter() - t0
                    values = dict(zip((f"train/{k}" for k in keys), means))
                    if not all(math.isfinite(v) for v in means):
                        raise TrainingDiverged(
                            f"the loss became {means} at step {self.step}; lower optim.lr, set optim.grad_clip, or "
                            f"train in fp32 (mixed_precision=no). The last good state is {ckpt.latest_state(self.ckpt_dir)}."
                        )
                    values["train/images_per_s"] = n_sum * images_per_step / max(elapsed, 1e-9)
                    # share of the time spent waiting for the loader: near 1 means the data pipeline is the limit
                    values["train/data_wait"] = self.data_wait / max(elapsed, 1e-9)
                    for name, sched in self.schedulers.items():
                        values[f"lr/{name}"] = sched.get_last_lr()[0]
                    self._log(values)
                    bar.set_postfix(loss=f"{values.get('train/loss', means[0]):.4g}",
                                    img_s=f"{values['train/images_per_s']:.1f}")
                    sums, n_sum, t0, self.data_wait = {}, 0, time.perf_counter(), 0.0
                if self.step % cfg.log.sample_every == 0 or last:
                    self.sample_grid()
                if (self.step % cfg.log.val_every == 0 or last) and len(self.val_set):
                    metrics = self.validate()
                    if metrics:
                        self._log(metrics)
                if self.step % cfg.checkpoint.every == 0 or last or stop:
                    self.save()
                    saved_at = self.step
                if stop:
                    result.stopped_by = signals.received or "signal"
                if stop or result.out_of_time:
                    break
        bar.close()
        if saved_at != self.step:
            self.save()
        result.step, result.metrics, result.history = self.step, dict(self.metrics), self.history
        if export and result.stopped_by is None:
            result.export_dir = self.export()
            if push_to_hub and acc.is_main_process:
                result.hub_commit = self.push(result.export_dir, push_to_hub)
        return result

    def export(self) -> Path:
        """Export the EMA (or raw) weights of the export slot to ``output_dir/export``."""
        from .export import export_model

        out_dir = self.out / "export"
        if self.accelerator.is_main_process:
            info = {"train_images": len(self.train_set), "val_images": len(self.val_set), "processes": self.world,
                    "mixed_precision": self.accelerator.mixed_precision}
            models = self._eval_models()
            bundle = {slot: (models[slot], architecture_of(self.cfg.models[slot])) for slot in self.stage.export_with}
            export_model(models[self.stage.export], architecture_of(self.cfg.models[self.stage.export]), out_dir,
                         cfg=self.cfg, stage=self.stage, step=self.step, metrics=self.metrics, data_info=info,
                         losses=self.loss_labels, bundle=bundle)
        self.accelerator.wait_for_everyone()
        return out_dir

    def close(self) -> None:
        """End the trackers and stop writing ``train.log``."""
        self.accelerator.end_training()
        self._detach_log()

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def push(self, folder: Path, repo_id: str) -> str:
        from .export import push_to_hub

        return push_to_hub(folder, repo_id, private=self.cfg.export.private,
                           message=f"{self.cfg.export.name or self.cfg.stage}: step {self.step}")


def train(cfg: TrainConfig, *, push_to_hub: str | None = None) -> TrainResult:
    """Run (or resume) one training run to ``max_steps``, then export; see :class:`Trainer`."""
    return Trainer(cfg).run(push_to_hub=push_to_hub or cfg.export.push_to_hub)


def validate_only(cfg: TrainConfig) -> TrainResult:
    """Validate the latest saved state without training or exporting.

    The validation set and degradation come from ``cfg``, so overrides measure a run under other conditions. For
    example, ``data.degradation_options.scale=4`` fixes the downsampling factor.
    """
    trainer = Trainer(cfg)
    try:
        if trainer.resume_from is None:
            raise ConfigError(f"nothing to validate: no training state in {trainer.ckpt_dir}")
        if not len(trainer.val_set):
            raise ConfigError("the run has no validation faces (data.val_fraction is 0)")
        metrics = trainer.validate()
        return TrainResult(step=trainer.step, output_dir=trainer.out, metrics=metrics)
    finally:
        trainer.close()


def export_only(cfg: TrainConfig, *, push_to_hub: str | None = None) -> TrainResult:
    """Validate and export the latest saved state without training (optionally publish it)."""
    trainer = Trainer(cfg)
    try:
        if trainer.resume_from is None:
            raise ConfigError(f"nothing to export: no training state in {trainer.ckpt_dir}")
        trainer.validate()
        result = TrainResult(step=trainer.step, output_dir=trainer.out, metrics=dict(trainer.metrics))
        result.export_dir = trainer.export()
        repo = push_to_hub or cfg.export.push_to_hub
        if repo and trainer.accelerator.is_main_process:
            result.hub_commit = trainer.push(result.export_dir, repo)
        return result
    finally:
        trainer.close()

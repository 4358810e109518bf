"""Typed training configs: YAML in, dataclasses out, every mistake reported with its key path.

A config file is a YAML mapping; ``key.sub=value`` overrides on the command line are applied to it
before validation (values are parsed as YAML, so ``optim.lr=2e-4`` and ``ema.enabled=false`` work).
Model entries and losses are BasicSR-style ``type:``-keyed mappings; their remaining keys are
checked against the dataclass that the registered model or loss declares, and ``stage_options``
against the stage's own options dataclass, so a typo anywhere fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from bfr_core.errors import InputError


class ConfigError(InputError):
    """A training config (file or override) that cannot be used as written."""


# --------------------------------------------------------------------------------------------- coercion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` converted to the annotated type ``tp``, or a :class:`ConfigError` naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans: take the option that was typed
            words = ("yes", "on", "true") if value else ("no", "off", "false")
            for option in args:
                if isinstance(option, str) and option.lower() in words:
                    return option
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        hint = " (YAML reads yes/no/on/off as booleans: quote the word)" if isinstance(value, bool) else ""
        raise ConfigError(f"{path}: expected a string, got {value!r}{hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: cannot read {value!r} as {_type_name(tp)}")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking names, types and required fields."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of {cls.__name__} fields, got {data!r}")
    custom = getattr(cls, "from_raw", None)
    if custom is not None:
        return custom(data, path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{_join(path, k)}: unknown setting.{hint} {cls.__name__} has: {', '.join(fields)}.")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required setting is missing.")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path and not str(e).startswith(path) else str(e)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-able data (custom ``to_raw`` honoured)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        raw = getattr(obj, "to_raw", None)
        if raw is not None:
            return raw()
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# --------------------------------------------------------------------------------------------- sections


@dataclass
class ModelSpec:
    """One model slot: ``{type: NAME, init: WEIGHTS?, frozen: BOOL, <config fields of that type>}``.

    ``init`` is anything :func:`bfr_core.weights.load_model` accepts (a file, a registry id) and
    loads the starting weights; without it the model starts from random initialisation.
    """

    type: str
    config: Any = None
    init: str | None = None
    init_strict: bool = True
    frozen: bool = False

    RESERVED = ("type", "init", "init_strict", "frozen")

    @classmethod
    def from_raw(cls, data: Mapping[str, Any], path: str) -> "ModelSpec":
        from .registry import MODELS

        if "type" not in data:
            raise ConfigError(f"{path}.type: required (one of: {', '.join(MODELS.names())}).")
        entry = MODELS.get(str(data["type"]))
        rest = {k: v for k, v in data.items() if k not in cls.RESERVED}
        return cls(
            type=str(data["type"]),
            config=from_dict(entry.config, rest, path),
            init=coerce(data.get("init"), str | None, f"{path}.init"),
            init_strict=coerce(data.get("init_strict", True), bool, f"{path}.init_strict"),
            frozen=coerce(data.get("frozen", False), bool, f"{path}.frozen"),
        )

    def to_raw(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, **to_dict(self.config)}
        if self.init is not None:
            out.update(init=self.init, init_strict=self.init_strict)
        if self.frozen:
            out["frozen"] = True
        return out


@dataclass
class LossSpec:
    """One loss term: ``{type: NAME, weight: W, <options of that loss>}`` (BasicSR style)."""

    type: str
    weight: float = 1.0
    options: Any = None

    @classmethod
    def from_raw(cls, data: Mapping[str, Any], path: str) -> "LossSpec":
        from .registry import LOSSES

        if "type" not in data:
            raise ConfigError(f"{path}.type: required (one of: {', '.join(LOSSES.names())}).")
        entry = LOSSES.get(str(data["type"]))
        weight = coerce(data.get("weight", 1.0), float, f"{path}.weight")
        check(weight >= 0, f"{path}.weight must be ≥ 0, got {weight}")
        rest = {k: v for k, v in data.items() if k not in ("type", "weight")}
        return cls(type=str(data["type"]), weight=weight, options=from_dict(entry.options, rest, path))

    def to_raw(self) -> dict[str, Any]:
        return {"type": self.type, "weight": self.weight, **to_dict(self.options)}


@dataclass
class AugmentConfig:
    """Random zoom, rotation, shift and colour changes of each training face (before it is degraded).

    All off by default: aligned-face training normally flips only. Small sets of a few dozen faces need them,
    or a model learns those faces rather than faces (README "Training at small scale"). Validation faces are
    never augmented.
    """

    scale: tuple[float, float] = (1.0, 1.0)  # zoom factor range (> 1 zooms in)
    rotate: float = 0.0  # degrees, uniform in ±rotate
    translate: float = 0.0  # shift, uniform in ±translate × size, per axis
    brightness: float = 0.0  # added, uniform in ±brightness
    contrast: float = 0.0  # factor, uniform in 1 ± contrast
    saturation: float = 0.0  # factor, uniform in 1 ± saturation
    hue: float = 0.0  # shift, uniform in ±hue turns of the colour circle (≤ 0.5)

    def __post_init__(self) -> None:
        check(0.0 < self.scale[0] <= self.scale[1], f"data.augment.scale must be 0 < low ≤ high, got {self.scale}")
        check(min(self.rotate, self.translate, self.brightness, self.contrast, self.saturation, self.hue) >= 0,
              "data.augment: rotate, translate, brightness, contrast, saturation and hue must be ≥ 0")
        check(self.translate <= 0.5 and self.contrast < 1 and self.saturation <= 1 and self.hue <= 0.5,
              "data.augment: need translate ≤ 0.5, contrast < 1, saturation ≤ 1 and hue ≤ 0.5")

    @property
    def geometric(self) -> bool:
        return self.scale != (1.0, 1.0) or self.rotate > 0 or self.translate > 0

    @property
    def enabled(self) -> bool:
        return self.geometric or max(self.brightness, self.contrast, self.saturation, self.hue) > 0


@dataclass
class DataConfig:
    """Where the faces come from and how they are degraded."""

    root: str
    type: str = "face_folder"
    size: int = 512
    val_fraction: float = 0.02  # share of images held out (at least one when there are ≥ 2)
    val_max: int = 256  # cap on the validation images
    max_images: int | None = None  # use only the first N (after the split), for small runs
    hflip: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    degradation: str = "realesrgan"
    degradation_options: dict[str, Any] = field(default_factory=dict)
    degrade_on: Literal["worker", "device"] = "worker"  # per image in the loader workers, or per batch on the GPU
    num_workers: int = 4
    worker_start: Literal["default", "fork", "spawn", "forkserver"] = "default"  # how loader workers start
    cache: Literal["none", "memory"] = "none"  # memory: decode and resize every image once (small sets only)
    align: Literal["none", "detect"] = "none"  # detect: the folder holds whole photos; align their faces first
    detector: str | None = None  # face-detector weights for align=detect (RetinaFace or YuNet file)
    align_min_face: float = 64.0  # skip faces smaller than this (frame pixels, √ box area)
    align_max_faces: int = 1  # faces kept per photo, largest first (0: all)
    licence: str = "unknown: state the licence of your training images before sharing the weights"
    description: str = ""

    def __post_init__(self) -> None:
        check(self.size >= 8 and self.size % 8 == 0, f"data.size must be a multiple of 8 (≥ 8), got {self.size}")
        check(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        check(self.num_workers >= 0, "data.num_workers must be ≥ 0")
        check(self.max_images is None or self.max_images >= 1, "data.max_images must be ≥ 1")
        check(self.val_max >= 0, "data.val_max must be ≥ 0")
        check(self.align == "none" or bool(self.detector),
              "data.detector: align=detect needs face-detector weights (e.g. detection_Resnet50_Final.pth)")
        check(self.align_max_faces >= 0, "data.align_max_faces must be ≥ 0")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (one optimiser per trained model)."""

    type: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global gradient norm
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(all(0 <= b < 1 for b in self.betas), f"optim.betas must be in [0, 1), got {self.betas}")
        check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip must be > 0 (or null)")
        check(self.warmup_steps >= 0, "optim.warmup_steps must be ≥ 0")


@dataclass
class EMAConfig:
    """Exponential moving average of the exported model's weights."""

    enabled: bool = True
    decay: float = 0.999
    start_step: int = 0  # copy the weights (no averaging) before this step
    every: int = 1

    def __post_init__(self) -> None:
        check(0.0 <= self.decay < 1.0, f"ema.decay must be in [0, 1), got {self.decay}")
        check(self.every >= 1, "ema.every must be ≥ 1")


@dataclass
class CheckpointConfig:
    """When training state is saved, how many states are kept, and whether to resume."""

    every: int = 1000
    keep_last: int = 2
    resume: str = "auto"  # auto: latest state in output_dir if any; never: refuse a non-empty run; or a state folder

    def __post_init__(self) -> None:
        check(self.every >= 1, "checkpoint.every must be ≥ 1")
        check(self.keep_last >= 1, "checkpoint.keep_last must be ≥ 1")


@dataclass
class LogConfig:
    """Console, tracker, sample-grid and validation cadence."""

    every: int = 50
    sample_every: int = 1000
    val_every: int = 5000
    num_samples: int = 4
    tracker: Literal["tensorboard", "none"] = "tensorboard"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        check(self.every >= 1 and self.sample_every >= 1 and self.val_every >= 1, "log.*every must be ≥ 1")


@dataclass
class ValConfig:
    """Validation metrics on the held-out faces."""

    lpips: bool | str = "auto"  # auto: LPIPS-alex when its weights are installed; off (false); or a lpips_alex.safetensors
    batch_size: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.lpips, bool):
            self.lpips = "auto" if self.lpips else "off"
        check(self.batch_size >= 1, "val.batch_size must be ≥ 1")


@dataclass
class ExportConfig:
    """What the exported weights are called, their licence, and where they are published."""

    name: str = ""
    licence: str = "other"  # SPDX-like id for the model card (the weights inherit the data's terms)
    licence_note: str = ""
    push_to_hub: str | None = None
    private: bool = True
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"


@dataclass
class TrainConfig:
    """Everything one training run needs. See ``trainer/configs/*.yaml`` for examples."""

    stage: str
    models: dict[str, ModelSpec]
    data: DataConfig
    output_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000
    # wall-clock budget of this invocation: at the first step past it the run validates, saves and exports as if
    # max_steps were reached (a later run with the same output_dir resumes towards max_steps)
    max_minutes: float | None = None
    batch_size: int = 4  # per process, per micro-batch
    grad_accum: int = 1
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    deterministic: bool = False
    cpu: bool = False  # force the CPU even when a GPU is visible
    stage_options: Any = None
    losses: list[LossSpec] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    optim_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per trained model, e.g. {d: {lr: 4e-4}}
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    val: ValConfig = field(default_factory=ValConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        check(self.max_steps >= 1, f"max_steps must be ≥ 1, got {self.max_steps}")
        check(self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be > 0, got {self.max_minutes}")
        check(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}")
        check(self.grad_accum >= 1, f"grad_accum must be ≥ 1, got {self.grad_accum}")

    def optim_for(self, name: str) -> OptimConfig:
        """The optimiser settings of one trained model (``optim`` plus its ``optim_overrides`` entry)."""
        extra = self.optim_overrides.get(name)
        if not extra:
            return self.optim
        return from_dict(OptimConfig, {**to_dict(self.optim), **extra}, f"optim_overrides.{name}")


def validate(raw: Mapping[str, Any]) -> TrainConfig:
    """Check a raw config mapping against the dataclasses and the registries."""
    from .registry import STAGES

    raw = dict(raw)
    if "stage" not in raw:
        raise ConfigError(f"stage: required (one of: {', '.join(STAGES.names())}).")
    stage = STAGES.get(str(raw["stage"]))
    options = raw.pop("stage_options", None)
    cfg = from_dict(TrainConfig, raw)
    cfg.stage_options = from_dict(stage.options, options, "stage_options")
    for name in cfg.optim_overrides:
        cfg.optim_for(name)
    from .data import build_degradation

    build_degradation(cfg.data)  # unknown degradation options fail here, before any model is built
    stage.check_config(cfg)
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.0.c=value"`` → (["a", "b", "0", "c"], parsed YAML value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in a raw config (list items by index: ``losses.0.weight=0.5``)."""
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                node = node[_index(node, part, item)]
                continue
            if node.get(part) is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, item)] = value
        else:
            node[last] = value
    return raw


def _index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {item!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def load_raw(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a mapping (``base: other.yaml`` entries are merged underneath)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of settings")
    base = raw.pop("base", None)
    if base is not None:
        raw = merge(load_raw(path.parent / str(base)), raw)
    return raw


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``top`` over ``base`` (mappings merge, everything else is replaced)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """Read, override and validate a config file."""
    return validate(apply_overrides(load_raw(path), list(overrides or [])))


def dump(cfg: TrainConfig) -> str:
    """The config as YAML (what ``output_dir/config.yaml`` holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

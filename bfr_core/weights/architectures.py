"""Architecture detection from state-dict keys, and strict loading with a readable report.

Each :class:`Architecture` names a few keys that only it has (its *signature*). Detection searches a
:class:`~bfr_core.weights.files.Checkpoint` for those keys under any prefix, so the same entry finds a
generator at the top level of our own files, under ``g_ema.`` in a training checkpoint, or under
``state_dict.decoder.`` in an e4e file. The model class is imported only when the entry is built, so
this registry stays cheap to import (spandrel's design, written for our checkpoints).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import WeightsError
from .files import Checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """How to recognise one architecture in a checkpoint and build it.

    ``model`` and ``config_from_state_dict`` are ``"module:attr"`` paths imported lazily; the model class
    takes a config dataclass. ``prefixes`` lists the nests where this architecture may sit in a file, best
    first (EMA weights over raw training weights); a match anywhere else (e.g. a UNet inside another
    model) is not reported. ``extras`` maps model keys to keys stored outside the prefix (e4e's ``latent_avg``).
    """

    name: str
    signature: tuple[str, ...]
    model: str
    config_from_state_dict: str
    prefixes: tuple[str, ...] = ("",)
    extras: Mapping[str, str] = field(default_factory=dict)
    strip: tuple[str, ...] = ("module.",)
    title: str = ""

    def model_class(self) -> type[nn.Module]:
        return _import(self.model)

    def config_from(self, sd: Mapping[str, torch.Tensor]) -> Any:
        return _import(self.config_from_state_dict)(sd)


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture, *, replace: bool = False) -> Architecture:
    """Add an architecture (detection order is registration order)."""
    if arch.name in _REGISTRY and not replace:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _REGISTRY[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Architecture:
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}.") from None


def all_architectures() -> list[Architecture]:
    _ensure_builtin()
    return list(_REGISTRY.values())


def _ensure_builtin() -> None:
    from . import builtin_architectures  # noqa: F401  (registers on first import)


@dataclass(frozen=True)
class Match:
    """An architecture found in a checkpoint at ``prefix``."""

    arch: Architecture
    prefix: str

    def state_dict(self, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
        """The architecture's state dict: the tensors under the prefix, canonicalised, plus extras."""
        sd = ckpt.sub(self.prefix)
        for strip in self.arch.strip:
            if sd and all(k.startswith(strip) for k in sd):
                sd = {k[len(strip):]: v for k, v in sd.items()}
        for model_key, file_key in self.arch.extras.items():
            if file_key in ckpt.tensors:
                sd[model_key] = ckpt.tensors[file_key]
        return sd


def _find_prefixes(keys: set[str], signature: tuple[str, ...], strips: tuple[str, ...]) -> list[str]:
    """Every prefix under which all signature keys exist (optionally with a ``module.`` in between)."""
    first = signature[0]
    found = []
    for key in keys:
        if not key.endswith(first):
            continue
        head = key[: len(key) - len(first)]
        if head and not head.endswith("."):
            continue
        candidates = [head[: -len(s)] for s in strips if head.endswith(s)] + [head]
        for cand in candidates:
            inner = head[len(cand):]
            if all(cand + inner + sig in keys for sig in signature):
                found.append(cand)
                break
    return found


def detect(ckpt: Checkpoint, only: str | None = None) -> list[Match]:
    """Find every known architecture in ``ckpt``: one match per (architecture, prefix), best prefix first."""
    keys = set(ckpt.tensors)
    matches: list[Match] = []
    for arch in all_architectures():
        if only is not None and arch.name != only:
            continue
        rank = {p: i for i, p in enumerate(arch.prefixes)}
        prefixes = sorted((p for p in _find_prefixes(keys, arch.signature, arch.strip) if p in rank), key=rank.__getitem__)
        matches += [Match(arch, p) for p in prefixes]
    return matches


def describe_shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in sd.items()}


@dataclass
class LoadReport:
    """What did not line up between a state dict and a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 12) -> str:
        lines = []
        for title, items in (("missing keys (in the model, not the file)", self.missing),
                             ("unexpected keys (in the file, not the model)", self.unexpected)):
            if items:
                lines.append(f"{len(items)} {title}: " + ", ".join(items[:limit]) + (" …" if len(items) > limit else ""))
        if self.mismatched:
            shown = ", ".join(f"{k} file{list(a)} vs model{list(b)}" for k, a, b in self.mismatched[:limit])
            lines.append(f"{len(self.mismatched)} keys with mismatched shapes: {shown}" + (" …" if len(self.mismatched) > limit else ""))
        return "\n".join(lines) if lines else "all keys match"


def compare_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> LoadReport:
    """Compare keys and shapes of ``sd`` with ``model`` without loading anything."""
    own = model.state_dict()
    report = LoadReport()
    report.missing = sorted(k for k in own if k not in sd)
    report.unexpected = sorted(k for k in sd if k not in own)
    report.mismatched = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    return report


def load_state_dict_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True, what: str = "checkpoint") -> LoadReport:
    """Load ``sd`` into ``model``; with ``strict`` any difference raises a WeightsError listing it."""
    report = compare_state_dict(model, sd)
    if strict and not report.ok:
        raise WeightsError(
            f"{what} does not fit {type(model).__name__}:\n{report.format()}\n"
            "The file is for another architecture or size, or it is damaged. `bfr info FILE` shows what it contains."
        )
    if not report.ok:
        log.warning("%s loaded non-strictly into %s:\n%s", what, type(model).__name__, report.format())
    usable = {k: v for k, v in sd.items() if k not in report.unexpected and k not in {m[0] for m in report.mismatched}}
    model.load_state_dict(usable, strict=False)
    return report


def build(match: Match, ckpt: Checkpoint, *, strict: bool = True, config: Any = None,
          device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> tuple[nn.Module, LoadReport]:
    """Build the matched architecture from its config (stored or inferred) and load its weights."""
    sd = match.state_dict(ckpt)
    arch = match.arch
    if config is None:
        config = stored_config(ckpt, arch.name) or arch.config_from(sd)
    with skip_init():
        model = arch.model_class()(config)
    report = load_state_dict_checked(model, sd, strict=strict, what=f"{arch.name} weights in {ckpt.path.name if ckpt.path else 'checkpoint'}")
    if report.missing and not strict:
        log.warning("%d parameters of %s were not in the file and are left uninitialised", len(report.missing), arch.name)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval().requires_grad_(False), report


@contextlib.contextmanager
def skip_init():
    """Skip random weight initialisation while building a model whose weights are loaded next.

    Building on the meta device would be faster still, but would leave non-persistent buffers (blur
    kernels, schedules computed in ``__init__``) empty; skipping only the ``torch.nn.init`` calls keeps them.
    """
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def stored_config(ckpt: Checkpoint, arch_name: str) -> Any:
    """The config dataclass written by :func:`bfr_core.weights.save_model`, if this file has one.

    Files holding several models (the trainer's bundled exports) store every config in ``bfr_configs``.
    """
    stored = ckpt.meta.get("bfr_configs", {}).get(arch_name)
    if stored is None and ckpt.meta.get("bfr_arch") == arch_name:
        stored = ckpt.meta.get("bfr_config")
    if stored is None:
        return None
    return _config_from_dict(_config_class(get(arch_name)), stored)


def _config_class(arch: Architecture) -> type:
    """The config dataclass of an architecture, from its model's type hints.

    Taken from our registry (trusted code), never from a name stored in the file: a file must not be
    able to make us import and call something of its choosing.
    """
    import inspect
    import typing

    init = arch.model_class().__init__
    hints = typing.get_type_hints(init)
    params = [p for p in inspect.signature(init).parameters.values() if p.name != "self"]
    ann = hints.get(params[0].name) if params else None
    # `config: Config | None = None` is common: take the dataclass out of the union.
    ann = next((a for a in (typing.get_args(ann) or (ann,)) if hasattr(a, "__dataclass_fields__")), None)
    if ann is None:
        raise WeightsError(f"{arch.model} must take a config dataclass as its first argument")
    return ann


def _config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    import dataclasses

    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(value, list) and isinstance(f.default, tuple):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


ModelFactory = Callable[[Any], nn.Module]

"""Explicit registries: stages, models, losses, datasets and degradations are chosen by name from these.

Nothing is discovered by scanning folders: an entry exists because a module registered it, and the
modules that hold the built-in entries are listed by name in :data:`BUILTIN_MODULES` and imported on
first use (so ``import trainer.registry`` stays cheap).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from .config import ConfigError

T = TypeVar("T")

#: Modules that register the built-in entries, imported on the first lookup.
BUILTIN_MODULES = (
    "trainer.models",
    "trainer.losses",
    "trainer.data",
    "trainer.stages.pgdiff",
    "trainer.stages.vspbfr",
    "trainer.stages.pltrans",
    "trainer.stages.compact",
)


class Registry(Generic[T]):
    """A name → entry table with a clear error (and a suggestion) for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None, *, replace: bool = False) -> Callable[[T], T] | T:
        """``REG.register("name", obj)`` or as a decorator ``@REG.register("name")``."""

        def add(obj: T) -> T:
            if name in self._items and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add(item) if item is not None else add

    def get(self, name: str) -> T:
        _load_builtins()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}.") from None

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


STAGES: Registry = Registry("stage")
MODELS: Registry = Registry("model type")
LOSSES: Registry = Registry("loss type")
DATASETS: Registry = Registry("dataset type")
DEGRADATIONS: Registry = Registry("degradation")

"""Load the pack the way ComfyUI does, against our stand-in of its API, and run nodes like its executor.

``load_pack()`` imports the repository root as a package through its ``__init__.py`` (as ComfyUI's
``load_custom_node`` does) and returns {node_id: class}. ``run()`` fills widget defaults, checks values
against the schema (min/max, combo options) the way ComfyUI validates a prompt, and calls ``execute``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "comfy_stub"
PACK_NAME = "comfyui_bfr_under_test"


def install_stub(base: Path) -> None:
    if str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))
    import folder_paths

    folder_paths.set_base(str(base))


def load_pack(base: Path) -> dict[str, type]:
    install_stub(base)
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    module = sys.modules[PACK_NAME]
    extension = asyncio.run(module.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return {cls.define_schema().node_id: cls for cls in nodes}


def _widget_kind(inp) -> str:
    return inp.Parent.io_type


def check_value(inp, value) -> None:
    kind = _widget_kind(inp)
    if kind in ("INT", "FLOAT"):
        if getattr(inp, "min", None) is not None and value < inp.min:
            raise ValueError(f"{inp.id}: {value} is below the minimum {inp.min}")
        if getattr(inp, "max", None) is not None and value > inp.max:
            raise ValueError(f"{inp.id}: {value} is above the maximum {inp.max}")
    if kind == "COMBO" and value not in inp.options:
        raise ValueError(f"{inp.id}: {value!r} is not one of {inp.options}")


def run(cls, **given):
    """Execute a node class like ComfyUI: defaults for missing widgets, validation, then ``execute``."""
    schema = cls.define_schema()
    kwargs = {}
    for inp in schema.inputs or []:
        if inp.id in given:
            value = given[inp.id]
            if not isinstance(value, (list, dict)) or _widget_kind(inp) in ("INT", "FLOAT", "COMBO"):
                if _widget_kind(inp) in ("INT", "FLOAT", "COMBO", "BOOLEAN", "STRING"):
                    check_value(inp, value)
            kwargs[inp.id] = value
        elif getattr(inp, "default", None) is not None:
            kwargs[inp.id] = inp.default
        elif not inp.optional:
            raise ValueError(f"{schema.node_id}: required input {inp.id!r} was not given")
    unknown = set(given) - set(kwargs)
    if unknown:
        raise ValueError(f"{schema.node_id}: unknown inputs {sorted(unknown)}")
    out = cls.execute(**kwargs)
    if inspect.iscoroutine(out):
        out = asyncio.run(out)
    return out

"""ComfyUI nodes of ComfyUI-BFR (V3 API). Thin wrappers: they convert types and call ``bfr_core``.

Each family lives in its own module with a ``NODES`` list. A module whose optional dependency is
missing is skipped with a logged reason; the other families still load.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger("bfr")

#: Node families, in menu order.
FAMILIES = ("vspbfr", "pgdiff", "pltrans", "compact", "faces", "degrade")


def node_list() -> list[type]:
    """Import every family and collect its nodes; a family that fails to import is reported and skipped."""
    from . import _comfy

    _comfy.register_model_folders()
    nodes: list[type] = []
    for name in FAMILIES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:
            if e.name is None or e.name.startswith(__name__):
                raise  # our own module is broken: that is a bug, not a missing optional package
            log.warning("ComfyUI-BFR: %s nodes disabled: the package %r is missing (pip install it to enable them)", name, e.name)
            continue
        nodes.extend(module.NODES)
    return nodes


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: returns the extension that lists our nodes."""
    from ._comfy import ComfyExtension

    class BFRExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            return node_list()

    return BFRExtension()

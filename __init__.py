"""ComfyUI-BFR: blind face restoration nodes for ComfyUI (VSPBFR, PGDiff, PLTrans).

ComfyUI imports this folder from ``custom_nodes/``. The nodes use the ``bfr_core`` library that lives
beside this file; if it is not installed with pip (``pip install -e .``), this folder is put on the
import path so a plain clone works too. Importing downloads nothing and loads no model.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
try:
    import bfr_core  # noqa: F401
except ImportError:
    sys.path.append(_here)

from .nodes import comfy_entrypoint  # noqa: E402

__all__ = ["comfy_entrypoint"]

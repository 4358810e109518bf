"""The architectures this package knows, in detection order.

Signatures are keys that only that architecture has, taken from the official state-dict layouts
(`tests/fixtures/official_layouts/`). Model modules are imported only when a match is built.
"""

from .architectures import Architecture, register

_M = "bfr_core.models."

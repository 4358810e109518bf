"""bfr_core: blind face restoration models, pipelines and tools, independent of ComfyUI.

Importing this package is cheap: submodules load their heavy dependencies when they are used.
"""

__version__ = "0.1.0"

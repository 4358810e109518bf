"""The one module that imports ComfyUI (``comfy_api``, ``comfy.*``, ``folder_paths``).

Everything the nodes need from the host goes through here, so a change of ComfyUI's API (for example
``comfy_api.latest`` → a versioned module) is a change to this file only.
"""

from __future__ import annotations

import logging
import os
import weakref
import torch

from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401  (re-exported to the node modules)
import comfy.model_management as model_management
import comfy.utils
import folder_paths

from bfr_core.progress import Progress
from bfr_core.weights import add_search_dir

log = logging.getLogger("bfr")

MODEL_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin"}

#: Our own folder plus the folders other face-restoration packs use, so files already there are found.
MODEL_FOLDERS = ("bfr", "facerestore_models", "facedetection")


def register_model_folders() -> None:
    """Register ``models/bfr`` (and read ``facerestore_models``/``facedetection``) with ComfyUI and the core."""
    for name in MODEL_FOLDERS:
        default = os.path.join(folder_paths.models_dir, name)
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[name] = ([default], set(MODEL_EXTENSIONS))
        for path in folder_paths.get_folder_paths(name):
            add_search_dir(path)


def model_files(folders: tuple[str, ...] = MODEL_FOLDERS) -> list[str]:
    """Checkpoint files in our model folders (or only ``folders``), for loader combo boxes."""
    names: set[str] = set()
    for name in folders:
        try:
            names.update(folder_paths.get_filename_list(name))
        except Exception as e:  # a broken extra_model_paths entry must not break the node list
            log.warning("could not list models/%s: %s", name, e)
    return sorted(names)


def model_path(filename: str, folders: tuple[str, ...] = MODEL_FOLDERS) -> str | None:
    """Full path of a file listed by :func:`model_files`."""
    for name in folders:
        path = folder_paths.get_full_path(name, filename)
        if path:
            return path
    return None


def download_dir(folder: str = "bfr") -> str:
    """Where nodes put downloaded checkpoints: the first ``models/bfr`` folder (``facedetection`` for detectors)."""
    return folder_paths.get_folder_paths(folder)[0]


def compute_device() -> torch.device:
    return model_management.get_torch_device()


def output_device() -> torch.device:
    """Where IMAGE tensors are returned (ComfyUI keeps them on the CPU between nodes)."""
    return model_management.intermediate_device()


def progress(total: int, node_id: str | None = None, preview: bool = False) -> Progress:
    """A core Progress wired to ComfyUI's progress bar and its interrupt button."""
    bar = comfy.utils.ProgressBar(total, node_id=node_id)

    def on_progress(done: int, total_: int, image: torch.Tensor | None) -> None:
        shown = _preview(image) if (preview and image is not None) else None
        bar.update_absolute(done, total_, shown)

    return Progress(total, on_progress, model_management.throw_exception_if_processing_interrupted)


def _preview(image: torch.Tensor):
    """First image of a (B,3,H,W) [-1,1] tensor as the (format, PIL image, max size) tuple ComfyUI previews take."""
    from PIL import Image

    x = ((image[0].detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return ("JPEG", Image.fromarray(x), 512)


_patchers: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()


def load_on_device(*modules: torch.nn.Module) -> torch.device:
    """Move modules to the compute device under ComfyUI's memory manager (so it can evict them)."""
    import comfy.model_patcher

    device = compute_device()
    patchers = []
    for m in modules:
        p = _patchers.get(m)
        if p is None:
            p = comfy.model_patcher.ModelPatcher(m, load_device=device, offload_device=model_management.unet_offload_device())
            _patchers[m] = p
        patchers.append(p)
    model_management.load_models_gpu(patchers)
    return device


OOM = model_management.OOM_EXCEPTION


def free_memory(bytes_needed: int, device: torch.device) -> None:
    model_management.free_memory(bytes_needed, device)


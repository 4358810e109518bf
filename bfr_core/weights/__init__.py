"""One path for every checkpoint: find or download it, read it safely, detect what it is, load it strictly."""

from .architectures import Architecture, LoadReport, detect, register
from .fetch import add_search_dir, bfr_home, download, resolve, search_dirs, sha256_file
from .files import Checkpoint, convert_to_safetensors, load_checkpoint, save_checkpoint
from .loader import LoadedModel, inspect_checkpoint, load_model, open_checkpoint, save_model, unload_all
from .registry import KNOWN, HubSource, KnownCheckpoint, PackagedSource, UrlSource, known

__all__ = [
    "Architecture", "LoadReport", "detect", "register",
    "add_search_dir", "bfr_home", "download", "resolve", "search_dirs", "sha256_file",
    "Checkpoint", "convert_to_safetensors", "load_checkpoint", "save_checkpoint",
    "LoadedModel", "inspect_checkpoint", "load_model", "open_checkpoint", "save_model", "unload_all",
    "KNOWN", "HubSource", "KnownCheckpoint", "PackagedSource", "UrlSource", "known",
]

"""Errors that name the problem and the fix, raised instead of crashing deep inside torch."""


class BFRError(Exception):
    """Base class for every error this package raises on purpose."""


class InputError(BFRError, ValueError):
    """An image, mask or argument a user passed cannot be used as given."""


class WeightsError(BFRError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the architecture."""


class UnsafeCheckpointError(WeightsError):
    """A pickled checkpoint asks to run code (or load a type) outside the allow-list."""


class DownloadError(WeightsError):
    """A download failed, was truncated, or does not match its known hash."""


class Interrupted(BFRError):
    """The caller asked long-running work to stop (ComfyUI's interrupt, Ctrl-C in the CLI)."""

"""Seeded random streams: every random draw in a pipeline comes from a generator made here.

A pipeline with several random consumers (VSPBFR: the diffuser's start, the random styles, the noise
injections) derives one named stream per consumer from the user's seed, so changing one setting does not
shift the random numbers another consumer sees.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from .errors import InputError

MAX_SEED = 2**63 - 1


def derive_seed(seed: int, stream: str = "") -> int:
    """A 63-bit seed for the named stream of ``seed`` (the seed itself for the unnamed stream)."""
    if not stream:
        return int(seed) & MAX_SEED
    digest = hashlib.blake2b(f"{int(seed)}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & MAX_SEED


def make_generator(seed: int, device: torch.device | str = "cpu", stream: str = "") -> torch.Generator:
    """A torch.Generator on ``device`` seeded from ``seed`` and the stream name.

    The same seed gives the same numbers on the same kind of device; CPU and CUDA streams differ.
    """
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(seed, stream))
    return gen


def randn(shape, generator: torch.Generator, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise from ``generator`` (drawn on the generator's device, then moved)."""
    out = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return out.to(device=device or generator.device, dtype=dtype)


def randn_batch(shape: Sequence[int], generator: torch.Generator | Sequence[torch.Generator],
                device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal (B, ...) noise, float32: from one generator for the whole batch, or, given one generator
    per image, image i drawn from generator i (so an image's noise does not depend on the batch it is in)."""
    if isinstance(generator, torch.Generator):
        return randn(tuple(shape), generator, device=device)
    if len(generator) != shape[0]:
        raise InputError(f"{len(generator)} noise generators were given for a batch of {shape[0]}; give one per image.")
    return torch.cat([randn((1, *shape[1:]), g, device=device) for g in generator])

"""An exponential moving average of a model (what gets validated and exported).

The average lives in a float32 copy of the model, ``ema.module``, updated in place with fused
``_foreach`` ops: one pass over the weights, no host synchronisation, and no second copy to assemble
when sampling or exporting. Integer buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema.update(model, step)`` after each optimiser step; ``ema.module`` is the averaged model (eval mode)."""

    def __init__(self, model: nn.Module, decay: float, start_step: int = 0, every: int = 1):
        self.decay = float(decay)
        self.start_step = int(start_step)
        self.every = int(every)
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self._state = self.module.state_dict()  # the module's own tensors: updating them updates the module
        self._float_keys = [k for k, v in self._state.items() if v.is_floating_point()]

    def to(self, device: torch.device | str) -> "EMA":
        self.module.to(device)
        self._state = self.module.state_dict()
        return self

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average ``model``'s current weights in (``step`` counts optimiser steps, from 1)."""
        if step % self.every:
            return
        state = model.state_dict()
        current = [state[k].detach().float() for k in self._float_keys]
        shadow = [self._state[k] for k in self._float_keys]
        if step <= self.start_step:
            torch._foreach_copy_(shadow, current)
        else:
            torch._foreach_lerp_(shadow, current, 1.0 - self.decay)
        for k, v in state.items():
            if not v.is_floating_point():
                self._state[k].copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)

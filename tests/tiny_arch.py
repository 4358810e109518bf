"""A tiny architecture used to test the weights machinery without any real model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bfr_core.weights.architectures import Architecture


@dataclass
class TinyNetConfig:
    channels: int = 8
    depth: int = 2


class TinyNet(nn.Module):
    def __init__(self, config: TinyNetConfig | None = None):  # Optional on purpose: the loader must unwrap it
        super().__init__()
        self.config = config = config or TinyNetConfig()
        self.head = nn.Conv2d(3, config.channels, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(config.channels, config.channels, 3, padding=1) for _ in range(config.depth))
        self.tail = nn.Conv2d(config.channels, 3, 3, padding=1)
        self.register_buffer("kernel", torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8)  # persistent, computed at init

    def forward(self, x):
        h = self.head(x)
        for conv in self.body:
            h = h + conv(h).relu()
        return x + self.tail(h)


def config_from_state_dict(sd) -> TinyNetConfig:
    return TinyNetConfig(channels=sd["head.weight"].shape[0], depth=len({k.split(".")[1] for k in sd if k.startswith("body.")}))


TINY = Architecture(
    name="tiny_net",
    signature=("head.weight", "tail.weight", "kernel"),
    # this module's own name: pytest may import it as `tests.tiny_arch` or `<repo>.tests.tiny_arch`
    model=f"{__name__}:TinyNet",
    config_from_state_dict=f"{__name__}:config_from_state_dict",
    prefixes=("g_ema.", "params_ema.", "g.", "", "state_dict."),
    title="test network",
)

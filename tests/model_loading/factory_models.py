"""Model factories for the model-loading tests (importable as ``factory_models:<name>``; not a test module)."""
from __future__ import annotations

import torch
from torch import nn


class ThreeClassNet(nn.Module):
    """A 1x1x1 convolution from one input channel to ``out`` classes (no ``out_channels`` attribute:
    the loader must count the channels by a forward pass)."""

    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.head = nn.Conv3d(1, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def build(out: int = 3) -> nn.Module:
    """The factory: a fresh (seeded) :class:`ThreeClassNet`."""
    torch.manual_seed(0)
    return ThreeClassNet(out)


def not_a_module() -> str:
    return "a string, not a module"


def broken() -> nn.Module:
    raise RuntimeError("the factory's own bug")

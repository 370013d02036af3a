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


#: Intensities (after the toolkit's HU window, [-1024, 1024] -> [0, 1]) that each class of the
#: liver phantom sits at: body 0 HU, liver 200 HU, tumour 600 HU.
PHANTOM_POINTS = (0.5, (200 + 1024) / 2048, (600 + 1024) / 2048)


def tangent_weights(points=PHANTOM_POINTS) -> dict[str, torch.Tensor]:
    """Weights of ``Conv3d(1, C, 1)`` with ``logit_c(v) = 2 p_c x(v) - p_c^2``: tangents of ``x^2``, so the
    argmax is the class whose point is nearest to the voxel's intensity, and each logit depends on its own
    voxel alone: the vanilla gradient of class c's proxy lies entirely in c's region (``e_{c->c} = 1``)."""
    p = torch.tensor(points, dtype=torch.float32)
    return {"weight": (2 * p).view(-1, 1, 1, 1, 1), "bias": -(p**2)}


def build_tangent() -> nn.Module:
    """A factory of an untrained ``Conv3d(1, 3, 1)`` (the weights come from a file)."""
    return nn.Conv3d(1, 3, 1)

"""Tiny models, scans and reference wrappers for the attribution-metric tests."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from agg2exp_lightning.explain.proxy import prediction_labels, proxy_output

N_CLASSES = 3
SHAPE = (12, 12, 12)


class TinySegNet(nn.Module):
    """Non-linear 3-class segmentation net: conv 3^3 -> tanh -> conv 1^3."""

    def __init__(self, linear: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv3d(4, N_CLASSES, 1)
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(x)
        return self.conv2(h if self.linear else torch.tanh(h))


class ProxyModule(nn.Module):
    """``[B, 1, *S] -> [B, T]`` proxies, the classifier view Quantus indexes with ``y_batch``.

    ``labels=None`` recomputes the mask from each input's own prediction; otherwise it is held fixed.
    """

    def __init__(self, net: nn.Module, targets: Sequence[int], labels: Tensor | None) -> None:
        super().__init__()
        self.net = net
        self.targets = list(targets)
        self.labels = labels

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        labels = prediction_labels(logits) if self.labels is None else self.labels
        return proxy_output(logits, labels, self.targets)


def gradient_attributions(net: nn.Module, image: Tensor, targets: Sequence[int], *, times_input_minus: float | None = None) -> Tensor:
    """``[T, *S]`` gradients of each target's proxy (mask from ``image``'s own prediction).

    With ``times_input_minus=b`` the gradient is multiplied by ``image - b``: for a linear net this is each
    voxel's exact contribution to the proxy drop when it is replaced by ``b``.
    """
    x = image.detach().clone()[None].requires_grad_(True)
    with torch.no_grad():
        labels = prediction_labels(net(x))[0]
    maps = []
    for t in targets:
        (g,) = torch.autograd.grad(proxy_output(net(x), labels, [t]).sum(), x)
        g = g[0, 0]
        maps.append(g if times_input_minus is None else g * (image[0] - times_input_minus))
    return torch.stack(maps).detach()


@pytest.fixture
def net() -> TinySegNet:
    torch.manual_seed(26)  # a seed whose prediction on `image` holds every class (~700/300/700 voxels)
    return TinySegNet().eval()


@pytest.fixture
def linear_net() -> TinySegNet:
    torch.manual_seed(38)  # every class predicted on `image` (~550/1050/125 voxels)
    return TinySegNet(linear=True).eval()


@pytest.fixture
def image() -> Tensor:
    """``[1, 12, 12, 12]`` scan in [0, 1]."""
    return torch.from_numpy(np.random.default_rng(5).random((1, *SHAPE), dtype=np.float32))


@pytest.fixture
def targets() -> list[int]:
    return list(range(N_CLASSES))

"""Fixtures of the explanation-engine tests (models in explain_models.py)."""
from __future__ import annotations

import pytest
import torch

from explain_models import RegionNet, SmoothConvNet  # noqa: I001 - beside this file


@pytest.fixture
def region_setup():
    """A 4-region 8^3 label map, a RegionNet on it and a positive image (float64)."""
    regions = torch.zeros(8, 8, 8, dtype=torch.long)
    regions[4:] = 1
    regions[:, 5:] = 2
    regions[2:6, 2:6, 2:6] = 3
    alpha = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    beta = torch.tensor([0.0, 1.0, 1.5, 0.5], dtype=torch.float64)
    context = [0, 3, 1, 2]
    model = RegionNet(regions, alpha, beta, context)
    image = torch.rand(1, 8, 8, 8, dtype=torch.float64) + 0.5
    return model, image, regions, alpha, beta, context


@pytest.fixture
def conv_setup():
    """A smooth 4-class conv net (float64) and a 10^3 image."""
    return SmoothConvNet(), torch.rand(1, 10, 10, 10, dtype=torch.float64)

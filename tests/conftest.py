"""Shared fixtures: tiny, seeded, no downloads."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield

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


#: Settings for a tiny Swin-UNETR that runs at 32^3 (instance norm fails there: group norm instead).
TINY_MODEL_ARGS = (
    "--model.feature_size=12",
    "--model.depths=[1, 1, 1, 1]",
    "--model.roi_size=[32, 32, 32]",
    '--model.norm_name=["group", {"num_groups": 3}]',
)


@pytest.fixture
def tiny_model_args() -> list[str]:
    """LightningCLI arguments for a Swin-UNETR small enough for CPU tests."""
    return list(TINY_MODEL_ARGS)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """36 synthetic subjects (splits as the demo: 5 validation scans), 40^3 voxels of 8 mm, generated once."""
    from agg2exp_lightning.data.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("cohort") / "thorax"
    generate_cohort(root, n_subjects=36, seed=3, shape=(40, 40, 40), spacing=8.0, progress=False)
    return root

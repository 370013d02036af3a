"""Fixtures of the robustness suite: a small cohort to break, a tiny checkpoint, the public commands.

Every case here goes through a public entry point (``train.py``, ``audit.py``, ``agg2exp-make-cohort``,
``agg2exp-compare-methods`` or the functions they are thin wrappers of) and checks what a user sees:
the exit status, a message naming the file or argument, and the files left behind.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def clean_cohort(tmp_path_factory) -> Path:
    """Eight synthetic subjects in the TotalSegmentator layout, 40^3 voxels of 8 mm. Never modify it:
    copy it with :func:`cohort_copy` first."""
    from agg2exp_lightning.data.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("robust_cohort") / "thorax"
    generate_cohort(root, n_subjects=8, seed=5, shape=(40, 40, 40), spacing=8.0, progress=False)
    return root


@pytest.fixture
def cohort_copy(clean_cohort, tmp_path) -> Path:
    """A private copy of :func:`clean_cohort` that a test may break."""
    dst = tmp_path / "thorax"
    shutil.copytree(clean_cohort, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny Swin-UNETR saved as a SegmentationModule checkpoint (32^3 windows, group norm)."""
    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(
        feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32), norm_name=("group", {"num_groups": 3})
    )
    path = tmp_path_factory.mktemp("robust_ckpt") / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def run_command(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python <args>`` (e.g. ``run_command("audit.py", "--from-table", ...)`` or ``"-m", "module"``) as a
    user would, W&B disabled, and return the finished process with text stdout/stderr."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    first = str(REPO / args[0]) if args and args[0].endswith(".py") else args[0]
    return subprocess.run(
        [sys.executable, first, *args[1:]], cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def run_cli():
    """:func:`run_command` (test modules here are not importable packages)."""
    return run_command

"""Shared fixtures: tiny, seeded, no downloads."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
# precision "auto" resolves to fp32 in the tests, whatever the CPU: results and durations do not depend on
# whether this CPU has native bfloat16 (tests of "auto" itself set or clear it).
os.environ.setdefault("AGG2EXP_AUTO_PRECISION", "fp32")


def pytest_configure(config):
    """Under pytest-xdist, each worker gets an equal share of the cores (one torch thread on 2 cores with 2 workers),
    so that two workers' tensor ops do not fight over the same cores; subprocesses inherit it through the env."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_wandb_run_left_behind():
    """Finish any W&B run a test started (e.g. a disabled one under the demo config): Lightning's WandbLogger
    attaches to a run already in progress, so a later test would log into the leftover run."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


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


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` by file name (they are scripts, not a package): ``load_benchmark("audit_power")``."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


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


# Explanation tables (analysis and audit tests): the published table (shared/) and seeded synthetic tables.
#: CI clones the repository with shared/ beside it, i.e. at <clone>/../shared.
PUBLISHED_TABLE = (
    Path(__file__).parents[1] / ".." / "shared" / "data" / "agg2exp_tsv2" / "tsv2_test_aggregated_sg_explanations_with_dice.csv"
)
CLASSES = ("background", "aorta", "trachea", "heart", "ribs", "sternum")


@pytest.fixture(scope="session")
def published_table() -> Path:
    if not PUBLISHED_TABLE.is_file():
        pytest.skip(f"published Agg2Exp table not found at {PUBLISHED_TABLE.resolve()} (shared/ must sit beside the repository)")
    return PUBLISHED_TABLE


def synthetic_frame(
    n_normal: int = 60,
    n_planted: int = 0,
    *,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    planted_scanner: str = "C",
) -> pd.DataFrame:
    """A table in the published format with ``n_planted`` anomalous rows at the end.

    Normal rows: class ``a`` puts ~50 % of its mass in its own region and ~30 % in the
    background (Dirichlet noise). Planted row ``r``: every class ``i`` puts ~70 % of its mass in
    region ``(i + 1 + r mod (k - 1)) mod k`` (never its own) (so planted rows differ from each other too), have low Dice, and all share ``scanner == planted_scanner``; normal rows draw
    the scanner uniformly from A, B, C. ``age`` and ``sex`` are unrelated to anything.
    """
    rng = np.random.default_rng(seed)
    k = len(classes)
    n = n_normal + n_planted
    cols: dict[str, object] = {"patient": [f"s{i:04d}" for i in range(n)]}
    for i, a in enumerate(classes):
        normal = np.full(k, 0.2 / max(k - 2, 1))
        normal[0], normal[i] = 0.3, 0.5
        if i == 0:
            normal = np.full(k, 0.2 / (k - 1)); normal[0] = 0.8
        planted = np.full((n_planted, k), 0.3 / (k - 1))
        planted[np.arange(n_planted), (i + 1 + np.arange(n_planted) % (k - 1)) % k] = 0.7  # never region i
        shares = np.concatenate([rng.dirichlet(200 * normal, size=n_normal), *(rng.dirichlet(200 * p, size=1) for p in planted)])
        for j, b in enumerate(classes):
            cols[f"{a}_explanation_in_{b}_mass"] = shares[:, j]
            cols[f"{a}_explanation_in_{b}_mean"] = shares[:, j] * 1000.0
    for a in classes:
        cols[f"{a}_dice"] = np.concatenate([rng.uniform(0.9, 0.99, n_normal), rng.uniform(0.6, 0.8, n_planted)])
    cols["scanner"] = list(rng.choice(["A", "B", "C"], size=n_normal)) + [planted_scanner] * n_planted
    cols["age"] = rng.integers(20, 90, size=n)
    cols["sex"] = rng.choice(["F", "M"], size=n)
    return pd.DataFrame(cols)


@pytest.fixture(scope="session")
def make_frame():
    """The :func:`synthetic_frame` factory (test modules here are not importable packages)."""
    return synthetic_frame

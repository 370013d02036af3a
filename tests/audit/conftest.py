"""Fixtures of the audit tests (the explanation-table fixtures live in tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scan_cohort(tmp_path_factory) -> Path:
    """Eight synthetic subjects in the TotalSegmentator layout, 40^3 voxels of 8 mm."""
    from agg2exp_lightning.data.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("audit_cohort") / "thorax"
    generate_cohort(root, n_subjects=8, seed=3, shape=(40, 40, 40), spacing=8.0, progress=False)
    return root

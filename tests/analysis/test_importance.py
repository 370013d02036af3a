"""Global RoI importance and context reliance: known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agg2exp_lightning import THORAX_CLASSES
from agg2exp_lightning.analysis.importance import context_reliance, global_roi_importance, own_region_share, strongest_dependencies
from agg2exp_lightning.analysis.tables import read_explanation_table


def test_global_shares_equal_the_column_means_of_the_published_table(published_table):
    raw = pd.read_csv(published_table)
    imp = global_roi_importance(read_explanation_table(published_table).mass)
    spell = {"vertebrae": "vertebraes"}
    for i, a in enumerate(THORAX_CLASSES):
        for j, b in enumerate(THORAX_CLASSES):
            col = f"{spell.get(a, a)}_explanation_in_{spell.get(b, b)}_mass"
            assert imp[i, j] == pytest.approx(raw[col].mean(), rel=1e-12)


def test_importance_is_nan_aware():
    mass = np.array([[[0.2, 0.8]], [[0.4, np.nan]], [[np.nan, np.nan]]])
    np.testing.assert_allclose(global_roi_importance(mass), [[0.3, 0.8]])
    assert np.isnan(global_roi_importance(np.full((2, 1, 1), np.nan))).all()
    with pytest.raises(ValueError, match=r"shape \[N, A, B\]"):
        global_roi_importance(np.zeros((2, 2)))


def test_context_reliance_known_values():
    classes = regions = ("background", "heart", "aorta")
    # scan 0: heart keeps 60 % in heart, 30 % in background; scan 1: 40 % and 50 %
    mass = np.zeros((2, 3, 3))
    mass[:, 0] = [[1.0, 0, 0], [0.9, 0.1, 0]]
    mass[:, 1] = [[0.3, 0.6, 0.1], [0.5, 0.4, 0.1]]
    mass[:, 2] = [[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]]
    rel = context_reliance(mass, classes, regions)
    assert rel.loc["heart", "own_share"] == pytest.approx(0.5)
    assert rel.loc["heart", "context_reliance"] == pytest.approx(0.5)
    assert rel.loc["heart", "background_share"] == pytest.approx(0.4)
    assert rel.loc["background", "own_share"] == pytest.approx(0.95)
    np.testing.assert_allclose(own_region_share(mass, classes, regions), [[1.0, 0.6, 0.5], [0.9, 0.4, 0.5]])
    with pytest.raises(ValueError, match="classes without a region"):
        own_region_share(mass, ("background", "heart", "ribs"), regions)


def test_strongest_dependencies_skip_own_region_and_background():
    classes = regions = ("background", "heart", "aorta")
    imp = np.array([[0.9, 0.05, 0.05], [0.5, 0.2, 0.3], [0.6, 0.1, 0.3]])
    deps = strongest_dependencies(imp, classes, regions, k=5)
    assert deps.to_dict("records") == [
        {"region": "aorta", "class": "heart", "share": 0.3},
        {"region": "heart", "class": "aorta", "share": 0.1},
        {"region": "heart", "class": "background", "share": 0.05},
        {"region": "aorta", "class": "background", "share": 0.05},
    ]
    with pytest.raises(ValueError, match="positive integer"):
        strongest_dependencies(imp, classes, regions, k=0)

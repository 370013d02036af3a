"""Benjamini-Hochberg against scipy, Spearman per class."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control, spearmanr

from agg2exp_lightning.analysis.correlation import anomaly_dice_correlation, benjamini_hochberg


@pytest.mark.parametrize("seed", range(5))
def test_bh_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=30), rng.uniform(0, 0.01, size=5), [0.5, 0.5]])  # with ties
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"), rtol=1e-12)


def test_bh_keeps_nan_out_of_the_family():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    q = benjamini_hochberg(p)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], false_discovery_control([0.01, 0.04, 0.03]))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        benjamini_hochberg([0.2, 1.5])


def test_correlation_per_class_with_nan_and_constant_columns():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 3))
    dice = np.stack([-scores[:, 0] + 0.01 * rng.normal(size=20), rng.uniform(size=20), np.full(20, 0.9)], axis=1)
    dice[5, 1] = np.nan
    out = anomaly_dice_correlation(scores, dice, ["a", "b", "c"])
    assert out.loc["a", "rho"] < -0.95 and out.loc["a", "n"] == 20
    ok = np.isfinite(dice[:, 1])
    ref = spearmanr(scores[ok, 1], dice[ok, 1])
    assert out.loc["b", "rho"] == pytest.approx(ref.statistic) and out.loc["b", "p"] == pytest.approx(ref.pvalue)
    assert out.loc["b", "n"] == 19
    assert np.isnan(out.loc["c", "rho"]) and np.isnan(out.loc["c", "q"])  # constant Dice
    np.testing.assert_allclose(out["q"].iloc[:2], false_discovery_control(out["p"].iloc[:2]))

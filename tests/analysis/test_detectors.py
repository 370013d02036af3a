"""The robust distance (the scan-level score's default detector): known answers.

- on normal features its outlier call (score above 0) falls on the chi-square tail it names: 2.5 % of new rows;
- its scale per feature is the scaled MAD, else the standard deviation, else 1, written out here by hand;
- a few wild reference rows do not move it (a mean and standard deviation would be dragged along).
"""
from __future__ import annotations

import numpy as np
import pytest

from agg2exp_lightning.analysis.detectors import DEFAULT_SCORE_DETECTOR, RobustDistance, make_detector


def test_on_normal_features_the_outlier_call_is_the_chi_square_tail():
    rng = np.random.default_rng(0)
    det = RobustDistance().fit(rng.normal(3.0, 2.0, (20000, 4)))
    rate = float((det.score(rng.normal(3.0, 2.0, (40000, 4))) > 0).mean())
    assert rate == pytest.approx(0.025, abs=0.004)  # 40000 rows: sd of the rate 0.0008


def test_scale_is_the_mad_else_the_sd_else_one():
    ref = np.array([[0.0, 5.0, 7.0], [1.0, 5.0, 7.0], [2.0, 5.0, 7.0], [3.0, 5.0, 7.0], [10.0, 9.0, 7.0]])
    det = RobustDistance().fit(ref)
    # column 0: median 2, |deviations| 2 1 0 1 8 -> MAD 1; column 1: MAD 0, sd of (5 5 5 5 9) = 1.6; column 2: constant
    np.testing.assert_allclose(det.center, [2.0, 5.0, 7.0])
    np.testing.assert_allclose(det.scale, [1.4826, 1.6, 1.0])
    z2 = ((4.0 - 2.0) / 1.4826) ** 2 + (1.0 / 1.6) ** 2 + 2.0 ** 2
    from scipy.stats import chi2

    assert det.score(np.array([[4.0, 6.0, 9.0]]))[0] == pytest.approx(z2 / 3 - chi2.ppf(0.975, 3) / 3, rel=1e-12)


def test_a_constant_feature_whose_mean_rounds_off_still_gets_scale_one():
    # the mean of 24 copies of 0.1 is off by an ulp, so np.std gives 1.4e-17, not 0: that is no spread to scale by
    ref = np.column_stack([np.linspace(0.0, 1.0, 24), np.full(24, 0.1)])
    assert np.std(ref[:, 1]) > 0  # the rounding this guards against
    det = RobustDistance().fit(ref)
    assert det.scale[1] == 1.0
    assert det.score(np.array([[0.5, 1.1]]))[0] < 1.0  # one unit away: z = 1, not 1e17


def test_a_few_wild_reference_rows_do_not_move_it():
    rng = np.random.default_rng(1)
    clean = rng.normal(0.0, 1.0, (40, 2))
    wild = np.concatenate([clean, np.full((3, 2), 50.0)])
    row = np.array([[4.0, 4.0]])
    assert RobustDistance().fit(wild).score(row)[0] > 0.5 * RobustDistance().fit(clean).score(row)[0] > 0


def test_it_is_the_default_of_the_scan_level_score_and_refuses_too_few_rows():
    assert DEFAULT_SCORE_DETECTOR == "robust_distance" and isinstance(make_detector("robust_distance", 0), RobustDistance)
    with pytest.raises(ValueError, match=r"at least 2 reference rows of shape \[M, F\], got \(1, 3\)"):
        RobustDistance().fit(np.zeros((1, 3)))

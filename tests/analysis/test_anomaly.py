"""Per-class Isolation Forests: agreement with scikit-learn/scipy and planted anomalies."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import combine_pvalues, spearmanr
from sklearn.ensemble import IsolationForest

from agg2exp_lightning.analysis.anomaly import (
    TAIL_K,
    class_anomaly_scores,
    conformal_p,
    cross_fit_folds,
    extreme_cases,
    fisher_combination,
    scan_anomaly_scores,
    tail_p,
)
from agg2exp_lightning.analysis.cohort import analyze_cohort
from agg2exp_lightning.analysis.tables import parse_explanation_table, read_explanation_table


def test_published_table_rho_matches_an_independent_sklearn_scipy_computation(published_table):
    raw = pd.read_csv(published_table)
    analysis = analyze_cohort(read_explanation_table(published_table))
    names = [c[: -len("_dice")] for c in raw.columns if c.endswith("_dice")]
    assert len(names) == 17
    for i, a in enumerate(names):
        x = raw[[c for c in raw.columns if c.startswith(f"{a}_explanation_in_") and c.endswith("_mass")]].to_numpy()
        forest = IsolationForest(random_state=123).fit(x)
        decision = forest.decision_function(x)
        expected = spearmanr(decision, raw[f"{a}_dice"]).statistic
        # our score is -decision_function, so rho flips sign
        assert analysis.correlation["rho"].iloc[i] == pytest.approx(-expected, abs=1e-12)
        np.testing.assert_allclose(analysis.anomaly.scores[:, i], -decision, atol=1e-12)
        np.testing.assert_array_equal(analysis.anomaly.outliers[:, i], forest.predict(x) == -1)


def test_planted_anomalies_rank_first_in_every_class(make_frame):
    table = parse_explanation_table(make_frame(100, 8, seed=0))
    res = class_anomaly_scores(table.mass, table.classes)
    planted = set(range(100, 108))
    for i in range(len(table.classes)):
        top = set(np.argsort(-res.scores[:, i])[:8])
        assert top == planted, table.classes[i]
    assert res.outliers[100:].all() and res.any_outlier[100:].all()
    cases = extreme_cases(res.scores, table.ids, table.classes, k=3)
    most = cases[cases.end == "most_anomalous"]
    assert set(most["id"]) <= {table.ids[j] for j in planted}
    assert (cases.groupby(["class", "end"]).size() == 3).all()


def test_reference_fit_scores_new_scans(make_frame):
    reference = parse_explanation_table(make_frame(80, 0, seed=1))
    audited = parse_explanation_table(make_frame(10, 4, seed=2))
    res = class_anomaly_scores(audited.mass, audited.classes, reference.mass)
    assert (res.n_reference == 80).all()
    forest = IsolationForest(random_state=123).fit(reference.mass[:, 2])
    np.testing.assert_allclose(res.scores[:, 2], -forest.decision_function(audited.mass[:, 2]))
    assert res.outliers[10:].all()


def test_missing_shares_absent_region_is_zero_absent_class_is_unscored(make_frame):
    table = parse_explanation_table(make_frame(30, 0))
    mass = table.mass.copy()
    mass[3, 1, :] = np.nan  # class 1 not predicted in scan 3: no shares at all
    mass[4, 2, 5] = np.nan  # region 5 absent from scan 4: class 2's share there is undefined
    res = class_anomaly_scores(mass, table.classes)
    assert np.isnan(res.scores[3, 1]) and not res.outliers[3, 1]
    assert np.isfinite(res.scores[3, 0]) and res.n_reference[1] == 29 and res.n_reference[2] == 30
    filled = mass[:, 2].copy()
    filled[4, 5] = 0.0
    forest = IsolationForest(random_state=123).fit(filled)
    np.testing.assert_allclose(res.scores[:, 2], -forest.decision_function(filled))
    with pytest.raises(ValueError, match="reference_mass"):
        class_anomaly_scores(mass, table.classes, mass[:, :2])


# ---- scan-level score ------------------------------------------------------------------------------------


def _dirichlet(rng, n, a=2, b=5, conc=30.0):
    base = np.linspace(1.0, 2.0, b)
    return rng.dirichlet(conc * base / base.sum(), size=(n, a))


def test_conformal_p_and_fisher_agree_with_independent_references():
    rng = np.random.default_rng(0)
    ref = np.append(rng.normal(size=30), np.inf)
    s = np.concatenate([rng.normal(size=20), [np.inf, -np.inf, np.nan, ref[3]]])
    expected = [(1 + sum(r >= x for r in ref)) / (len(ref) + 1) if not np.isnan(x) else np.nan for x in s]
    np.testing.assert_allclose(conformal_p(s, ref), expected)
    p = rng.uniform(0.001, 1, size=(6, 4))
    p[2, 1] = np.nan
    p[5, :] = np.nan
    got = fisher_combination(p)
    for row, value in zip(p, got):
        finite = row[np.isfinite(row)]
        if len(finite):
            assert value == pytest.approx(-np.log10(combine_pvalues(finite, method="fisher").pvalue), rel=1e-9)
        else:
            assert np.isnan(value)


def test_per_class_p_values_are_cross_conformal_against_held_out_forests():
    rng = np.random.default_rng(1)
    ref, aud = _dirichlet(rng, 24), _dirichlet(rng, 6)
    res = scan_anomaly_scores(aud, ["a", "b"], ref, n_folds=4, random_state=7, score_detector="isolation_forest",
                              score_tail="conformal")
    folds = cross_fit_folds(24, 4, 7)
    assert sorted(np.bincount(folds)) == [6, 6, 6, 6]
    for i in range(2):
        oof, counts = np.empty(24), np.zeros(6)
        for f in range(4):
            forest = IsolationForest(random_state=7).fit(ref[folds != f, i])
            oof[folds == f] = -forest.decision_function(ref[folds == f, i])
            s = -forest.decision_function(aud[:, i])
            counts += [(oof[folds == f] >= x).sum() for x in s]
        np.testing.assert_allclose(res.class_p[:, i], (1 + counts) / 25)
        loo = [(1 + (np.delete(oof, j) >= oof[j]).sum()) / 24 for j in range(24)]
        np.testing.assert_allclose(res.reference_class_p[:, i], loo)
    np.testing.assert_allclose(res.score, fisher_combination(res.class_p))
    np.testing.assert_allclose(res.p_value, [(1 + (res.reference_score >= x).sum()) / 25 for x in res.score])


def _robust_z2(train: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The default score detector written out independently: mean over features of ((x - median) / scale)**2, the scale
    1.4826 MAD (else the sd, else 1), less the chi-square(F) 97.5 % quantile / F (looked up in scipy)."""
    from scipy.stats import chi2

    out = np.zeros(len(rows))
    n_feat = train.shape[1]
    for j in range(n_feat):
        col = sorted(train[:, j])
        med = (col[(len(col) - 1) // 2] + col[len(col) // 2]) / 2
        dev = sorted(abs(v - med) for v in col)
        mad = 1.4826 * (dev[(len(dev) - 1) // 2] + dev[len(dev) // 2]) / 2
        sd = float(np.sqrt(np.mean((train[:, j] - np.mean(train[:, j])) ** 2)))
        scale = mad if mad > 0 else (sd if sd > 0 else 1.0)
        out += ((rows[:, j] - med) / scale) ** 2
    return out / n_feat - chi2.ppf(0.975, n_feat) / n_feat


def test_the_default_score_detector_is_the_robust_distance_cross_fitted_like_the_forests():
    rng = np.random.default_rng(3)
    ref, aud = _dirichlet(rng, 24), _dirichlet(rng, 6)
    res = scan_anomaly_scores(aud, ["a", "b"], ref, n_folds=4, random_state=7, score_tail="conformal")  # the tail: tested below
    folds = cross_fit_folds(24, 4, 7)
    for i in range(2):
        oof, counts = np.empty(24), np.zeros(6)
        for f in range(4):
            oof[folds == f] = _robust_z2(ref[folds != f, i], ref[folds == f, i])
            s = _robust_z2(ref[folds != f, i], aud[:, i])
            counts += [(oof[folds == f] >= x).sum() for x in s]
        np.testing.assert_allclose(res.class_p[:, i], (1 + counts) / 25)
    # the paper's "outlier for any class" rate is still the per-class detector's (a forest), whatever scores the scans
    forest = scan_anomaly_scores(aud, ["a", "b"], ref, n_folds=4, random_state=7, score_detector="isolation_forest")
    assert res.heldout_class_fpr == forest.heldout_class_fpr
    lof = scan_anomaly_scores(aud, ["a", "b"], ref, n_folds=4, random_state=7, detector="local_outlier_factor",
                              score_detector="local_outlier_factor")
    assert scan_anomaly_scores(aud, ["a", "b"], ref, n_folds=4, random_state=7, detector="local_outlier_factor").heldout_class_fpr == (
        lof.heldout_class_fpr)


@pytest.mark.slow
@pytest.mark.parametrize("contamination", [0.05, 0.2])
def test_clean_scans_are_flagged_at_the_promised_rate(contamination):
    rates, expected = [], []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        res = scan_anomaly_scores(_dirichlet(rng, 200), ["a", "b"], _dirichlet(rng, 39), contamination=contamination, random_state=seed)
        rates.append(res.flagged.mean())
        expected.append(res.expected_fpr)
        np.testing.assert_array_equal(res.flagged, res.score > res.threshold)
    assert expected[0] == pytest.approx(np.floor(contamination * 40) / 40)
    # Given the reference, the rate is about Beta(k, M + 1 - k) around the expected one (sd 0.034 at 5 %,
    # 0.062 at 20 %); the mean of six draws is within 2.4 sd of it. (Forty draws at 20 % gave 0.176 +- 0.010:
    # if anything conservative.) Calibrating on in-sample forest scores instead would flag far more.
    assert np.mean(rates) == pytest.approx(expected[0], abs=0.03 if contamination < 0.1 else 0.06)


def test_planted_scans_rank_first_and_are_flagged_against_a_reference(make_frame):
    reference = parse_explanation_table(make_frame(60, 0, seed=3))
    audited = parse_explanation_table(make_frame(40, 6, seed=4))
    res = scan_anomaly_scores(audited.mass, audited.classes, reference.mass)
    assert set(np.argsort(-res.score)[:6]) == set(range(40, 46))
    assert res.flagged[40:].all() and res.flagged[:40].mean() <= 0.15
    assert res.expected_fpr == pytest.approx(3 / 61) and not res.self_reference


def test_fisher_combination_stays_finite_and_exact_for_tiny_p_values():
    got = fisher_combination(np.array([[1e-300, np.nan], [1e-300, 1e-300], [1.0, 1.0], [0.5, np.nan]]))
    # one p-value: the chi-square(2) tail at -2 ln p is p itself; two: p^2 (1 - ln p^2), by hand in log10
    assert got[0] == pytest.approx(300.0, rel=1e-12) and got[3] == pytest.approx(np.log10(2.0), rel=1e-12)
    assert got[1] == pytest.approx(600.0 - np.log10(1.0 + 600.0 * np.log(10.0)), rel=1e-12)
    assert got[2] == 0.0 and np.isfinite(got).all()


def test_tail_p_is_an_exponential_tail_beyond_the_largest_reference_score():
    reference = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 9.0, 10.0, np.nan, np.inf])  # 10 scored (one +inf), one NaN
    scores = np.array([8.0, 10.0, 12.0, 1e9, np.inf, np.nan])
    p = conformal_p(scores, reference)
    got = tail_p(scores, reference, p)
    # by hand: the 5 largest finite scores are 10, 9, 7, 5, 4; u = 4, beta = mean(6, 5, 3, 1) = 3.75; M = 10 (NaN not counted)
    assert TAIL_K == 5
    np.testing.assert_array_equal(got[:2], p[:2])  # within the reference's range: conformal
    assert got[2] == pytest.approx(np.exp(-(12.0 - 10.0) / 3.75) / 11, rel=1e-12) and got[2] < p[2]
    assert got[3] == 1e-300  # floored: Fisher's sum stays finite
    assert got[4] == p[4] and np.isnan(got[5])  # +inf (a missing class) keeps its calibrated p; NaN stays NaN
    flat = np.ones(7)  # no spread at the top of the reference: conformal
    np.testing.assert_array_equal(tail_p(np.array([5.0]), flat, np.array([0.125])), [0.125])
    np.testing.assert_array_equal(tail_p(np.array([50.0]), reference[:5], np.array([1 / 6])), [1 / 6])  # too few scores


def test_a_feature_far_outside_clean_variation_counts_with_the_exponential_tail():
    rng = np.random.default_rng(4)
    ref_mass, mass = _dirichlet(rng, 30), _dirichlet(rng, 20)
    families = {"f": (rng.normal(0, 1, (20, 2, 3)), rng.normal(0, 1, (30, 2, 3)))}
    families["f"][0][0, 0, 0] = 40.0  # scan 0: one feature of one class 40 sd away
    families["f"][0][1, 0, 0] = 8.0  # scan 1: 8 sd away, also beyond every reference scan
    conformal = scan_anomaly_scores(mass, ["a", "b"], ref_mass, families=families, score_tail="conformal")
    tail = scan_anomaly_scores(mass, ["a", "b"], ref_mass, families=families)
    assert conformal.family_p["f"][0, 0] == conformal.family_p["f"][1, 0] == pytest.approx(1 / 31)
    assert tail.family_p["f"][0, 0] < tail.family_p["f"][1, 0] < 1 / 31  # how far now counts
    assert tail.family_p["f"][0, 0] < 1e-30
    assert tail.p_value[0] == pytest.approx(1 / 31) and np.argmax(tail.score) == 0
    # the calibration stays conformal: the reference scans' own scores use the same tail, leaving themselves out
    assert np.isfinite(tail.reference_score).all() and tail.reference_family_p["f"].min() >= 1e-300
    with pytest.raises(ValueError, match="`score_tail`"):
        scan_anomaly_scores(mass, ["a", "b"], ref_mass, score_tail="gpd")


def test_a_missing_class_counts_as_most_anomalous_calibrated_by_the_reference():
    rng = np.random.default_rng(2)
    ref, aud = _dirichlet(rng, 30, a=3), _dirichlet(rng, 4, a=3)
    aud[0, 1] = np.nan  # class b not predicted in scan 0
    ref_some_missing = ref.copy()
    ref_some_missing[:9, 2] = np.nan  # class c missing in 9 of 30 reference scans
    aud[1, 2] = np.nan
    res = scan_anomaly_scores(aud, ["a", "b", "c"], ref_some_missing)
    assert res.class_p[0, 1] == pytest.approx(1 / 31)
    assert res.class_p[1, 2] == pytest.approx(10 / 31)


def test_self_reference_flags_the_most_unusual_scans_of_the_cohort(make_frame):
    audited = parse_explanation_table(make_frame(57, 3, seed=5))
    res = scan_anomaly_scores(audited.mass, audited.classes, contamination=0.05)
    assert res.self_reference and set(np.flatnonzero(res.flagged)) == {57, 58, 59}
    np.testing.assert_array_equal(res.flagged, res.score > res.threshold)


@pytest.mark.parametrize("bad", [0, -0.1, 0.51, 1, "x", float("nan"), True])
def test_contamination_outside_the_interval_is_refused_by_name(bad):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"`contamination` to be a number in \(0, 0.5\]"):
        scan_anomaly_scores(_dirichlet(rng, 5), ["a", "b"], _dirichlet(rng, 20), contamination=bad)


def test_too_few_reference_scans_are_refused_naming_the_count():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 10 reference scans .* got 7"):
        scan_anomaly_scores(_dirichlet(rng, 5), ["a", "b"], _dirichlet(rng, 7))


def test_a_class_whose_shares_do_not_vary_has_no_outliers_whatever_the_rounding():
    """Every scan puts all of class 0's mass in its own region (a known-answer model): the scans are tied, so none
    is an outlier. (scikit-learn's ``predict`` flags every scan of 4, 7 or 10 identical ones: the offset is a
    percentile of equal scores that rounds one unit in the last place past them.) Also when summation order leaves
    a difference of one unit in the last place between the scans."""
    from agg2exp_lightning.analysis.anomaly import class_anomaly_scores

    for n in (4, 6, 7, 10):
        exact = np.zeros((n, 1, 3))
        exact[:, 0, 0] = 1.0
        rounded = exact.copy()
        rounded[::2, 0, 1] = 2.0 ** -53  # what a different order of a float sum leaves
        rounded[::2, 0, 0] -= 2.0 ** -53
        for mass in (exact, rounded):
            result = class_anomaly_scores(mass, ["organ"])
            assert not result.outliers.any(), n
            np.testing.assert_allclose(result.scores, result.scores[0, 0], atol=1e-12)

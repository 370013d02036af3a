"""Bias tests: agreement with scipy, planted subgroup found, none on a clean table, odd metadata."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import PermutationMethod, chi2_contingency, fisher_exact, mannwhitneyu
from scipy.stats.contingency import association

from agg2exp_lightning.analysis.bias import bias_tests, classify_metadata
from agg2exp_lightning.analysis.cohort import ANY_CLASS, analyze_cohort
from agg2exp_lightning.analysis.tables import parse_explanation_table


def _row(result, column, group="g"):
    t = result.tests
    return t[(t.column == column) & (t.group == group)].iloc[0]


def test_each_test_agrees_with_scipy():
    rng = np.random.default_rng(3)
    n = 80
    out = rng.uniform(size=n) < 0.3
    meta = pd.DataFrame({
        "sex": rng.choice(["F", "M"], n),
        "site": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]),
        "big": rng.choice(["x", "y", "z"], n),
        "age": rng.normal(50, 10, n),
    })
    res = bias_tests(meta, {"g": out})
    sex = _row(res, "sex")
    tab = pd.crosstab(out, meta["sex"]).to_numpy()[::-1]  # rows: outliers, inliers
    ref = fisher_exact(tab)
    assert sex.test == "fisher_exact" and sex.p == pytest.approx(ref.pvalue) and sex.effect_size == pytest.approx(ref.statistic)
    age = _row(res, "age")
    ref = mannwhitneyu(meta.age[out], meta.age[~out], alternative="two-sided")
    assert age.p == pytest.approx(ref.pvalue)
    assert age.effect_size == pytest.approx(2 * ref.statistic / (out.sum() * (~out).sum()) - 1)
    big_tab = pd.crosstab(out, meta["big"]).to_numpy()
    big = _row(res, "big")
    assert big.test == "chi2"  # every expected count >= 5
    assert big.p == pytest.approx(chi2_contingency(big_tab, correction=False).pvalue)
    assert big.effect_size == pytest.approx(association(big_tab, method="cramer", correction=False))
    site = _row(res, "site")
    assert site.test == "chi2_permutation"  # level d has expected counts < 5
    site_tab = pd.crosstab(out, meta["site"]).to_numpy()
    ref = chi2_contingency(site_tab, correction=False, method=PermutationMethod(n_resamples=9999, rng=1))
    assert site.statistic == pytest.approx(ref.statistic)
    assert site.p == pytest.approx(ref.pvalue, abs=0.02)  # two Monte Carlo estimates of one p-value
    np.testing.assert_allclose(res.tests.q, __import__("scipy").stats.false_discovery_control(res.tests.p))


def test_planted_subgroup_is_found(make_frame):
    analysis = analyze_cohort(parse_explanation_table(make_frame(100, 8, seed=0, planted_scanner="C")))
    t = analysis.bias.tests
    union = _row(analysis.bias, "scanner", ANY_CLASS)
    assert union.q < 0.05 and union.detail.startswith("highest outlier rate: C ")
    per_class = t[(t.column == "scanner") & (t.group != ANY_CLASS)]
    assert len(per_class) == 6 and (per_class.q < 0.05).all()
    assert (t[t.column != "scanner"].q >= 0.05).all()  # age and sex were not planted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_bias_on_a_table_without_planted_rows(make_frame, seed):
    analysis = analyze_cohort(parse_explanation_table(make_frame(108, 0, seed=seed)))
    assert len(analysis.bias.tests) == 3 * 7  # 3 columns x (union + 6 classes)
    assert (analysis.bias.tests.q >= 0.05).all()


def test_odd_metadata_values_follow_the_documented_rules():
    meta = pd.DataFrame({
        "html": ["<script>alert(1)</script>", "x", "<script>alert(1)</script>", "x", " x ", "x"],
        "blank": ["", " ", None, np.nan, "NaN", "null"],
        "mixed": [1, "a", 2, "a", 1, "b"],
        "ids": ["p1", "p2", "p3", "p4", "p5", "p6"],
        "code": [0, 1, 0, 1, 1, None],
        "num": ["1.5", "2", " 3 ", "n/a", "4", "5e1"],
        "const": ["k"] * 6,
    })
    kinds = {c: classify_metadata(meta[c]) for c in meta}
    assert kinds["html"][0] == "categorical" and set(kinds["html"][1]) == {"<script>alert(1)</script>", "x"}
    assert kinds["blank"][0] is None and "fewer than 2" in kinds["blank"][2]
    assert kinds["mixed"][0] == "categorical" and "mixed numbers and text" in kinds["mixed"][2]
    assert kinds["ids"][0] is None and "id-like" in kinds["ids"][2]
    assert kinds["code"][0] == "categorical" and "2 values" in kinds["code"][2]
    assert kinds["num"][0] == "numeric"
    np.testing.assert_array_equal(kinds["num"][1].to_numpy(), [1.5, 2, 3, np.nan, 4, 50])
    assert kinds["const"][0] is None
    res = bias_tests(meta, {"g": np.array([True, False, True, False, False, False])})
    assert set(res.tests.column) == {"html", "mixed", "code", "num"}
    assert set(res.skipped.column) == {"blank", "ids", "const"}
    assert _row(res, "num").n_inliers == 3  # the missing value is left out


def test_groups_without_outliers_or_with_unscored_scans():
    meta = pd.DataFrame({"s": ["a", "b"] * 5})
    res = bias_tests(meta, {"none": np.zeros(10, bool), "partial": pd.Series([True, pd.NA] * 5, dtype="boolean")})
    assert res.tests.empty
    assert ("none", "*", "no outliers") in set(map(tuple, res.skipped.to_numpy()))
    assert ("partial", "s", "outliers or inliers have no value") in set(map(tuple, res.skipped.to_numpy()))
    with pytest.raises(ValueError, match="to have 10 flags"):
        bias_tests(meta, {"g": np.zeros(3, bool)})


# ---- continuous scan score across metadata groups ------------------------------------------------------
from scipy.stats import kruskal, norm, spearmanr  # noqa: E402

from agg2exp_lightning.analysis.bias import joint_q, score_tests  # noqa: E402
from agg2exp_lightning.analysis.correlation import benjamini_hochberg  # noqa: E402


def _score_row(result, column):
    t = result.tests
    return t[t.column == column].iloc[0]


def test_score_tests_agree_with_scipy_and_independent_formulas():
    rng = np.random.default_rng(11)
    n = 70
    meta = pd.DataFrame({
        "site": rng.choice(["a", "b", "c"], n),
        "sex": rng.choice(["F", "M"], n),
        "age": rng.integers(20, 90, n).astype(float),
    })
    score = rng.normal(size=n) + (meta["site"] == "c") * 1.5
    res = score_tests(meta, score, n_bootstrap=300, seed=1)
    site = _score_row(res, "site")
    groups = [score[meta.site == s] for s in "abc"]
    h = kruskal(*groups)
    assert site.test == "kruskal" and site.statistic == pytest.approx(h.statistic) and site.p == pytest.approx(h.pvalue)
    assert site.effect_size == pytest.approx(h.statistic / (n - 1))
    assert site.ci_low <= site.effect_size <= site.ci_high and site.ci_low > 0
    assert site.detail.startswith("highest scores: c ")
    sex = _score_row(res, "sex")
    f, m = score[meta.sex == "F"], score[meta.sex == "M"]
    u = sum((a > b) + 0.5 * (a == b) for a in f for b in m)  # U of the first group, by definition
    assert sex.test == "mannwhitneyu" and sex.statistic == pytest.approx(u)
    assert sex.effect_size == pytest.approx(2 * u / (len(f) * len(m)) - 1)
    assert sex.p == pytest.approx(mannwhitneyu(f, m, alternative="two-sided").pvalue)
    age = _score_row(res, "age")
    rho = spearmanr(score, meta.age).statistic
    se = np.sqrt((1 + rho**2 / 2) / (n - 3))
    assert age.test == "spearman" and age.effect_size == pytest.approx(rho)
    assert age.ci_low == pytest.approx(np.tanh(np.arctanh(rho) - norm.ppf(0.975) * se))
    binned = _score_row(res, "age (binned)")
    assert binned.test == "kruskal" and binned.n_groups == 4 and binned.kind == "numeric (binned)"
    quartile = np.floor(4 * (meta.age.rank(method="average") - 0.5) / n).clip(upper=3)  # a tie run: the bin of its mid-rank
    assert binned.p == pytest.approx(kruskal(*[score[quartile == b] for b in range(4)]).pvalue)
    np.testing.assert_allclose(res.tests.q, benjamini_hochberg(res.tests.p))


def test_a_shifted_subgroup_is_found_and_nothing_else(make_frame):
    rng = np.random.default_rng(5)
    meta = pd.DataFrame({"scanner": rng.choice(["A", "B", "C", "D", "E"], 60), "age": rng.integers(20, 90, 60), "sex": rng.choice(["F", "M"], 60)})
    score = rng.normal(size=60) + 1.5 * (meta.scanner == "E").to_numpy()
    res = score_tests(meta, score, n_bootstrap=0)
    assert _score_row(res, "scanner").q < 0.05 and _score_row(res, "scanner").detail.startswith("highest scores: E ")
    assert (res.tests[res.tests.column != "scanner"].q >= 0.05).all()


def test_score_tests_hold_their_level_under_shuffled_metadata():
    rng = np.random.default_rng(8)
    meta = pd.DataFrame({"scanner": rng.choice(list("ABCDE"), 60), "age": rng.integers(20, 90, 60), "sex": rng.choice(["F", "M"], 60)})
    score = rng.gamma(2.0, size=60)
    alarms = sum((score_tests(meta.sample(frac=1, random_state=k).reset_index(drop=True), score, n_bootstrap=0).tests.q < 0.05).any()
                 for k in range(100))
    assert alarms <= 12  # expected about 5 in 100 (binomial sd ~2.2)


def test_one_group_columns_and_missing_values_are_reported_not_tested():
    meta = pd.DataFrame({"site": ["x"] * 10, "sex": ["F", "M"] * 4 + [None, ""], "note": [f"n{i}" for i in range(10)]})
    score = np.arange(10.0)
    score[0] = np.nan
    res = score_tests(meta, score, n_bootstrap=0)
    reasons = dict(zip(res.skipped.column, res.skipped.reason))
    assert "fewer than 2 distinct values" in reasons["site"] and "id-like" in reasons["note"]
    sex = _score_row(res, "sex")
    assert sex.n == 7  # the NaN score and the two missing values are left out
    with pytest.raises(ValueError, match="one per metadata row"):
        score_tests(meta, score[:5])


def test_joint_q_is_one_benjamini_hochberg_family():
    a = pd.DataFrame({"p": [0.01, 0.2, 0.03]})
    b = pd.DataFrame({"p": [0.04, np.nan]})
    qa, qb = joint_q(a, b)
    np.testing.assert_allclose(np.r_[qa.q, qb.q], benjamini_hochberg([0.01, 0.2, 0.03, 0.04, np.nan]))

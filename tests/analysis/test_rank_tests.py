"""Rank tests with small groups, order-free bins and the Wilson interval, against independent references."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, kruskal, mannwhitneyu

from agg2exp_lightning.analysis.bias import bias_tests, quantile_bins, score_tests
from agg2exp_lightning.analysis.proportions import format_rate, wilson_interval
from agg2exp_lightning.analysis.rank_tests import kruskal_test, mannwhitney_test, permutation_rank_p


def _exact_kruskal_p(x: np.ndarray, sizes: list[int]) -> float:
    """Every assignment of the values to groups of these sizes, H of each (scipy), share >= observed."""
    n = len(x)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    observed = kruskal(*[x[labels == g] for g in range(len(sizes))]).statistic
    hits = total = 0
    for first in itertools.combinations(range(n), sizes[0]):
        rest = [i for i in range(n) if i not in first]
        for second in itertools.combinations(rest, sizes[1]):
            third = [i for i in rest if i not in second]
            h = kruskal(x[list(first)], x[list(second)], x[third]).statistic
            hits += h >= observed - 1e-9
            total += 1
    return hits / total


def _mc_tolerance(p: float, n: int = 9999) -> float:
    return 4 * np.sqrt(p * (1 - p) / n) + 2 / n


def test_kruskal_with_groups_of_two_and_three_is_a_permutation_p_near_the_exact_one():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=10), 1)  # rounding makes ties
    x[:2] += 1.5
    groups = np.array(["a"] * 2 + ["b"] * 3 + ["c"] * 5)
    test, h, p = kruskal_test(x, groups, seed=1)
    exact = _exact_kruskal_p(x, [2, 3, 5])
    assert test == "kruskal_permutation"
    assert h == pytest.approx(kruskal(x[:2], x[2:5], x[5:]).statistic)
    assert abs(p - exact) < _mc_tolerance(exact)
    big = np.repeat(["a", "b", "c"], 6)
    assert kruskal_test(rng.normal(size=18), big)[0] == "kruskal"  # 5+ per group: the chi-square tail


def test_mann_whitney_small_group_with_ties_is_near_the_exact_permutation_p():
    a = np.array([3.0, 3.0, 5.0])
    b = np.array([1.0, 2.0, 2.0, 3.0, 1.0, 0.0, 2.0, 1.0, 0.5, 2.0])
    test, u, p = mannwhitney_test(a, b, seed=0)
    both = np.r_[a, b]
    ref_u = mannwhitneyu(a, b).statistic
    dev = abs(ref_u - len(a) * len(b) / 2)
    us = [abs(mannwhitneyu(both[list(c)], np.delete(both, list(c))).statistic - len(a) * len(b) / 2) >= dev - 1e-9
          for c in itertools.combinations(range(len(both)), len(a))]
    exact = float(np.mean(us))
    assert test == "mannwhitneyu_permutation" and u == ref_u
    assert abs(p - exact) < _mc_tolerance(exact)
    # no ties, under 8 per group: scipy's exact null is kept
    assert mannwhitney_test(np.array([5.0, 6.0]), np.array([1.0, 2.0, 3.0, 4.0]))[0] == "mannwhitneyu"


def test_permutation_p_is_uniform_enough_under_the_null():
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 1, 1, 1] + [2] * 10)
    ps = np.array([permutation_rank_p(rng.normal(size=15), groups, seed=k, n_permutations=499) for k in range(200)])
    assert 0.01 <= np.mean(ps <= 0.05) <= 0.10 and 0.4 <= ps.mean() <= 0.6


def test_binned_score_test_keeps_equal_values_together_and_ignores_the_row_order():
    rng = np.random.default_rng(11)
    ages = np.array([50, 50] + [60] * 16 + [70, 70], dtype=float)
    score = rng.normal(size=20)
    assert sorted(set(quantile_bins(ages, 4)[ages == 60].tolist())) == [2]
    meta = pd.DataFrame({"age": ages})

    def binned(order: np.ndarray) -> pd.Series:
        res = score_tests(meta.iloc[order].reset_index(drop=True), score[order], n_bootstrap=0)
        return res.tests.set_index("column").loc["age (binned)"]

    first = binned(np.arange(20))
    assert first.n_groups == 3  # 50, 60, 70: the 16 equal ages are one bin
    for k in range(5):
        row = binned(np.random.default_rng(k).permutation(20))
        assert row.p == first.p and row.n_groups == 3
    by_score = binned(np.argsort(score))  # the order that turned 0.83 into 0.002 with rank(method="first")
    assert by_score.p == first.p


def test_outlier_vs_inlier_numeric_test_with_two_outliers_is_a_permutation_test():
    meta = pd.DataFrame({"age": [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 80, 80]})
    flags = np.array([False] * 10 + [True] * 2)
    row = bias_tests(meta, {"any": flags}).tests.iloc[0]
    assert row.test == "mannwhitneyu_permutation"
    # of the C(12, 2) = 66 ways to pick two scans, the two largest and the two smallest are as extreme
    assert row.p == pytest.approx(2 / 66, abs=_mc_tolerance(2 / 66))


@pytest.mark.parametrize(("k", "n"), [(0, 112), (1, 112), (7, 200), (5, 5), (3, 10)])
def test_wilson_interval_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_wilson_interval_refuses_bad_counts_and_formats_a_rate():
    for k, n in [(3, 2), (-1, 5), (1, 0), (1.5, 4)]:
        with pytest.raises(ValueError, match="Expected"):
            wilson_interval(k, n)
    assert format_rate(7, 200) == "3.5 % (95 % CI 1.7-7.0 %; 7 of 200)"

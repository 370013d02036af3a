"""Rank tests across groups that stay valid with small groups (pure functions).

Kruskal-Wallis ``H`` is referred to a chi-square distribution, an approximation that textbooks
trust from about 5 scans per group; scipy's Mann-Whitney U uses its exact null only without ties
and below 8 scans per group, else a normal approximation. Audits meet groups of 1-3 scans (a
scanner with few scans, an outlier group of two), so here a comparison whose smallest group has
fewer than :data:`MIN_ASYMPTOTIC_GROUP` scans gets a **permutation p-value** instead: the group
labels are shuffled ``n_permutations`` times (seeded) and
``p = (1 + #{permuted statistic >= observed}) / (n_permutations + 1)``, which is valid (never
below the true p in expectation) for any group sizes and ties.

The permuted statistic is ``sum_g R_g^2 / n_g`` over the groups' rank sums ``R_g`` (mid-ranks for
ties): ``H`` is an increasing function of it for fixed group sizes and ties (the tie correction is
the same in every permutation), and for two groups it is an increasing function of ``|U - n1 n2 / 2|``,
so one permutation test serves both Kruskal-Wallis and the two-sided Mann-Whitney U. The rows are
put in a canonical order before shuffling, so the same scans in another order give the same p.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import kruskal, mannwhitneyu, rankdata

__all__ = ["MIN_ASYMPTOTIC_GROUP", "N_PERMUTATIONS", "kruskal_test", "mannwhitney_test", "permutation_rank_p"]

#: Smallest group for which the asymptotic p-value is read; below it the permutation p-value.
MIN_ASYMPTOTIC_GROUP = 5
#: Label shuffles of the permutation p-value.
N_PERMUTATIONS = 9999


def permutation_rank_p(x: np.ndarray, groups: np.ndarray, *, seed: int = 0, n_permutations: int = N_PERMUTATIONS) -> float:
    """Permutation p-value of the Kruskal-Wallis statistic (two-sided Mann-Whitney for two groups).

    Args:
        x: ``[n]`` values.
        groups: ``[n]`` group labels (any hashable values).
        seed: seed of the shuffles.
        n_permutations: how many shuffles.

    Returns:
        ``(1 + #{permuted >= observed}) / (n_permutations + 1)``; NaN with fewer than 2 groups or
        no variation in ``x``.
    """
    x = np.asarray(x, dtype=float)
    _, idx = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(idx.max()) + 1 if len(idx) else 0
    if n_groups < 2 or np.ptp(x) == 0:
        return float("nan")
    order = np.lexsort((x, idx))  # a canonical row order: the p-value is the same for any order of the rows
    x, idx = x[order], idx[order]
    ranks = rankdata(x)
    sizes = np.bincount(idx, minlength=n_groups).astype(float)

    def stat(labels: np.ndarray) -> np.ndarray:  # [P, n] labels -> [P] sum_g R_g^2 / n_g
        p = labels.shape[0]
        offset = labels + n_groups * np.arange(p)[:, None]
        sums = np.bincount(offset.ravel(), weights=np.tile(ranks, p), minlength=p * n_groups).reshape(p, n_groups)
        return (sums**2 / sizes).sum(axis=1)

    observed = float(stat(idx[None, :])[0])
    rng = np.random.default_rng(seed)
    null = np.concatenate([stat(rng.permuted(np.tile(idx, (min(2000, n_permutations - start), 1)), axis=1))
                           for start in range(0, n_permutations, 2000)])
    tol = 1e-9 * max(1.0, abs(observed))
    return float((1 + int((null >= observed - tol).sum())) / (n_permutations + 1))


def _small(groups: np.ndarray) -> bool:
    _, counts = np.unique(np.asarray(groups), return_counts=True)
    return bool(counts.min() < MIN_ASYMPTOTIC_GROUP)


def kruskal_test(x: np.ndarray, groups: np.ndarray, *, seed: int = 0, n_permutations: int = N_PERMUTATIONS) -> tuple[str, float, float]:
    """Kruskal-Wallis across the groups of ``groups``: ``(test, H, p)``.

    ``test`` is ``"kruskal"`` (chi-square p) or ``"kruskal_permutation"`` when the smallest group has
    fewer than :data:`MIN_ASYMPTOTIC_GROUP` scans. ``H`` and ``p`` are NaN with fewer than 2 groups or
    no variation.
    """
    x, groups = np.asarray(x, dtype=float), np.asarray(groups)
    levels = np.unique(groups)
    if len(levels) < 2 or np.ptp(x) == 0:
        return "kruskal", float("nan"), float("nan")
    res = kruskal(*[x[groups == level] for level in levels])
    if _small(groups):
        return "kruskal_permutation", float(res.statistic), permutation_rank_p(x, groups, seed=seed, n_permutations=n_permutations)
    return "kruskal", float(res.statistic), float(res.pvalue)


def mannwhitney_test(a: np.ndarray, b: np.ndarray, *, seed: int = 0, n_permutations: int = N_PERMUTATIONS) -> tuple[str, float, float]:
    """Two-sided Mann-Whitney U of ``a`` against ``b``: ``(test, U of a, p)``.

    ``test`` is ``"mannwhitneyu"`` (scipy's p: exact without ties below 8 per group, else normal) or
    ``"mannwhitneyu_permutation"`` when a group has fewer than :data:`MIN_ASYMPTOTIC_GROUP` scans
    and scipy would not use its exact null (ties, or a group of 8 or more).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    res = mannwhitneyu(a, b, alternative="two-sided")
    both = np.concatenate([a, b])
    exact = len(np.unique(both)) == len(both) and max(len(a), len(b)) < 8
    if min(len(a), len(b)) < MIN_ASYMPTOTIC_GROUP and not exact:
        labels = np.r_[np.zeros(len(a), int), np.ones(len(b), int)]
        p = permutation_rank_p(both, labels, seed=seed, n_permutations=n_permutations)
        return "mannwhitneyu_permutation", float(res.statistic), (1.0 if np.isnan(p) else p)
    return "mannwhitneyu", float(res.statistic), float(res.pvalue)

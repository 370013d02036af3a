"""Are the outliers a subgroup? Outliers vs inliers for every metadata column.

How metadata values are read (:func:`classify_metadata`):

- **Missing**: NaN/None, empty or whitespace-only strings and the tokens ``nan``, ``na``,
  ``n/a``, ``none``, ``null`` (any case). Missing values are left out of each test.
- Other values are stripped of surrounding whitespace and otherwise kept as written: text is
  case-sensitive, and markup such as ``<script>`` is ordinary text (reports escape it).
- **numeric**: every value parses as a finite number and there are at least 3 distinct values;
  tested with a two-sided Mann-Whitney U (a permutation p-value when outliers or inliers number
  fewer than 5: :mod:`agg2exp_lightning.analysis.rank_tests`), effect size the rank-biserial correlation
  ``2 U_out / (n_out n_in) - 1`` (positive: outliers tend to have higher values); Student's t-test
  (``t_statistic``, ``t_p``), which the paper reported beside it for age, is given too.
- **categorical**: everything else, including numbers with at most 2 distinct values (codes) and
  columns mixing numbers and text (compared as text). A 2-level column is tested with Fisher's
  exact test (effect: the sample odds ratio of being an outlier at the first level, in sorted
  order, vs the second); more levels with a chi-square test of independence (effect: Cramer's V),
  replaced by a seeded permutation test of the same statistic when an expected count is below 5.
  ``detail`` names the level with the highest outlier rate; ``proportions`` gives each level's share
  among outliers and among inliers (what the paper reported for sex).
- **skipped** (with the reason recorded): fewer than 2 distinct values, or text with every value
  distinct (ids, free text); a comparison where outliers or inliers have no value.

All p-values of one :func:`bias_tests` call form one family for the Benjamini-Hochberg q-values.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, fisher_exact, rankdata, ttest_ind

from agg2exp_lightning.analysis.correlation import benjamini_hochberg
from agg2exp_lightning.analysis.rank_tests import N_PERMUTATIONS, kruskal_test, mannwhitney_test

MetadataKind = Literal["numeric", "categorical"]

_MISSING = frozenset({"", "nan", "na", "n/a", "none", "null"})
_TEST_COLUMNS = ["group", "column", "kind", "test", "n_outliers", "n_inliers", "statistic", "p", "effect", "effect_size", "detail",
                 "t_statistic", "t_p", "proportions"]


@dataclass(frozen=True)
class BiasResult:
    """Results of :func:`bias_tests`.

    Attributes:
        tests: one row per (group, column) test; columns ``group``, ``column``, ``kind``,
            ``test``, ``n_outliers``, ``n_inliers``, ``statistic``, ``p``, ``effect``,
            ``effect_size``, ``detail``, ``t_statistic`` / ``t_p`` (Student's t-test, numeric columns),
            ``proportions`` (categorical columns), ``q`` (BH over the main tests' ``p``).
        skipped: ``group`` (``"*"`` for all groups), ``column`` (``"*"`` for all columns), ``reason``.
    """

    tests: pd.DataFrame
    skipped: pd.DataFrame


def _clean(series: pd.Series) -> pd.Series:
    """Strings stripped, missing tokens -> None; object dtype."""
    def one(v: object) -> object:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return None
        s = str(v).strip()
        return None if s.lower() in _MISSING else s
    return series.astype(object).map(one)


def classify_metadata(series: pd.Series) -> tuple[MetadataKind | None, pd.Series, str]:
    """Decide how a metadata column is tested (rules in the module docstring).

    Args:
        series: raw values of one column.

    Returns:
        ``(kind, values, note)``: ``kind`` is ``None`` when the column is skipped; ``values``
        holds floats (numeric) or strings (categorical) with ``None`` for missing; ``note``
        explains a skip or a notable reading (e.g. mixed numbers and text).
    """
    values = _clean(series)
    present = values.dropna()
    if present.nunique() < 2:
        return None, values, f"fewer than 2 distinct values ({present.nunique()})"
    numbers = pd.to_numeric(present, errors="coerce")
    parsed = numbers.notna() & np.isfinite(numbers.astype(float))
    if parsed.all():
        if present.nunique() >= 3:
            return "numeric", pd.to_numeric(values, errors="coerce").astype(float), ""
        return "categorical", values, "numeric codes with 2 values, tested as categories"
    if present.nunique() == len(present):
        return None, values, "text with every value distinct (id-like)"
    note = "mixed numbers and text, compared as text" if parsed.any() else ""
    return "categorical", values, note


def _chi2_statistic(table: np.ndarray) -> np.ndarray:
    """Pearson chi-square of a batch of ``[..., 2, L]`` tables (no continuity correction)."""
    total = table.sum(axis=(-2, -1), keepdims=True)
    expected = table.sum(-1, keepdims=True) * table.sum(-2, keepdims=True) / total
    return ((table - expected) ** 2 / expected).sum(axis=(-2, -1))


def _permutation_chi2(is_out: np.ndarray, level_idx: np.ndarray, n_levels: int, seed: int,
                      n_permutations: int = N_PERMUTATIONS) -> tuple[float, float]:
    """Chi-square statistic and its permutation p-value (margins fixed by shuffling the flags)."""
    def tables(flags: np.ndarray) -> np.ndarray:
        out = np.stack([np.bincount(level_idx, weights=f, minlength=n_levels) for f in np.atleast_2d(flags)])
        col = np.bincount(level_idx, minlength=n_levels)
        return np.stack([out, col - out], axis=1)
    observed = float(_chi2_statistic(tables(is_out.astype(float)))[0])
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(is_out.astype(float), (n_permutations, 1)), axis=1)
    null = _chi2_statistic(tables(perms))
    p = (1 + int((null >= observed - 1e-12).sum())) / (n_permutations + 1)
    return observed, p


def _categorical_test(is_out: np.ndarray, values: np.ndarray, seed: int,
                      n_permutations: int = N_PERMUTATIONS) -> tuple[str, float, float, str, float, str]:
    levels = sorted(set(values))
    idx = np.array([levels.index(v) for v in values])
    table = np.stack([np.bincount(idx[is_out], minlength=len(levels)), np.bincount(idx[~is_out], minlength=len(levels))])
    rates = table[0] / table.sum(0)
    top = int(np.argmax(rates))
    detail = f"highest outlier rate: {levels[top]!s} ({table[0, top]}/{table.sum(0)[top]} = {rates[top]:.0%} vs {is_out.mean():.0%} overall)"
    n = table.sum()
    if len(levels) == 2:
        res = fisher_exact(table)
        return "fisher_exact", float(res.statistic), float(res.pvalue), "odds_ratio", float(res.statistic), detail + f"; odds ratio {levels[0]!s} vs {levels[1]!s}"
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    if (expected < 5).any():
        stat, p = _permutation_chi2(is_out, idx, len(levels), seed, n_permutations)
        test = "chi2_permutation"
    else:
        res = chi2_contingency(table, correction=False)
        stat, p, test = float(res.statistic), float(res.pvalue), "chi2"
    return test, stat, p, "cramers_v", math.sqrt(stat / n), detail


def _numeric_test(is_out: np.ndarray, values: np.ndarray, seed: int,
                  n_permutations: int = N_PERMUTATIONS) -> tuple[str, float, float, str, float, str]:
    x, y = values[is_out], values[~is_out]
    test, u, p = mannwhitney_test(x, y, seed=seed, n_permutations=n_permutations)
    r = 2.0 * u / (len(x) * len(y)) - 1.0
    return test, u, p, "rank_biserial", r, f"median {np.median(x):.4g} (outliers) vs {np.median(y):.4g} (inliers)"


def _paper_companions(kind: str, is_out: np.ndarray, values: np.ndarray) -> tuple[float, float, str]:
    """What the paper reported beside the main test: Student's t-test for numbers (``t_statistic``,
    ``t_p``; NaN for categories) and, for categories, the proportions of each level among outliers and
    among inliers (``"outliers: F 40%, M 60%; inliers: ..."``)."""
    if kind == "numeric":
        x, y = values[is_out].astype(float), values[~is_out].astype(float)
        if len(x) < 2 or len(y) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
            return float("nan"), float("nan"), ""
        res = ttest_ind(x, y)
        return float(res.statistic), float(res.pvalue), ""
    vals = values.astype(str)
    levels = sorted(set(vals))

    def shares(mask: np.ndarray) -> str:
        return ", ".join(f"{lv} {np.mean(vals[mask] == lv):.0%}" for lv in levels)
    return float("nan"), float("nan"), f"outliers: {shares(is_out)}; inliers: {shares(~is_out)}"


def bias_tests(metadata: pd.DataFrame, groups: Mapping[str, pd.Series | np.ndarray], *, seed: int = 0,
               n_permutations: int = N_PERMUTATIONS) -> BiasResult:
    """Test every metadata column for a difference between outliers and inliers, per group.

    Args:
        metadata: one row per scan, one column per metadata field (any dtypes).
        groups: name -> per-scan outlier flag aligned with ``metadata`` rows: ``True`` outlier,
            ``False`` inlier, missing (``pd.NA``/NaN) for scans not scored in that group.
        seed: seed of the permutation tests.
        n_permutations: permutations of the chi-square permutation test (used where an expected count is below 5).

    Returns:
        A :class:`BiasResult`; ``tests`` is empty when nothing could be tested.

    Raises:
        ValueError: a group's flags do not have one entry per metadata row.

    Example:
        >>> meta = pd.DataFrame({"scanner": ["A"] * 6 + ["B"] * 6})
        >>> res = bias_tests(meta, {"any": np.array([True] * 5 + [False] * 7)})
        >>> res.tests.loc[0, "test"]
        'fisher_exact'
    """
    rows: list[tuple] = []
    skipped: list[tuple[str, str, str]] = []
    kinds = {col: classify_metadata(metadata[col]) for col in metadata.columns}
    for col, (kind, _, note) in kinds.items():
        if kind is None:
            skipped.append(("*", str(col), note))
    for name, flags in groups.items():
        flags = pd.Series(np.asarray(flags, dtype=object)).map(lambda v: None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else bool(v))
        if len(flags) != len(metadata):
            raise ValueError(f"Expected group {name!r} to have {len(metadata)} flags, got {len(flags)}")
        if not flags.dropna().any():
            skipped.append((str(name), "*", "no outliers"))
            continue
        for col, (kind, values, note) in kinds.items():
            if kind is None:
                continue
            keep = (flags.notna() & values.reset_index(drop=True).notna()).to_numpy()
            is_out = flags[keep].astype(bool).to_numpy()
            vals = values.reset_index(drop=True)[keep].to_numpy()
            if is_out.all() or not is_out.any():
                skipped.append((str(name), str(col), "outliers or inliers have no value"))
                continue
            if kind == "numeric":
                result = _numeric_test(is_out, vals.astype(float), seed, n_permutations)
            else:
                result = _categorical_test(is_out, vals.astype(str), seed, n_permutations)
            test, stat, p, effect, size, detail = result
            if note:
                detail = f"{detail}; {note}"
            t_stat, t_p, proportions = _paper_companions(kind, is_out, vals)
            rows.append((str(name), str(col), kind, test, int(is_out.sum()), int((~is_out).sum()), stat, p, effect, size, detail,
                         t_stat, t_p, proportions))
    tests = pd.DataFrame(rows, columns=_TEST_COLUMNS)
    tests["q"] = benjamini_hochberg(tests["p"].to_numpy(dtype=float)) if len(tests) else pd.Series(dtype=float)
    return BiasResult(tests=tests, skipped=pd.DataFrame(skipped, columns=["group", "column", "reason"]))


# ---- the continuous scan-level score across the groups of every metadata column ----------------------
#: Bootstrap resamples for the effect-size confidence intervals.
N_BOOTSTRAP = 1000
#: Quantile bins of a numeric column for its binned test.
N_BINS = 4
_SCORE_COLUMNS = ["group", "column", "kind", "test", "n", "n_groups", "statistic", "p", "effect", "effect_size", "ci_low", "ci_high", "detail"]


def quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index ``0 .. n_bins - 1`` of each value, equal values always in one bin, whatever the row order.

    A run of equal values goes to the bin that holds its mid-rank: ``floor(n_bins (r - 1/2) / n)`` with
    ``r`` the mid-rank (1-based, ties averaged). Without ties these are the usual equal-count
    quantile bins; a large run of ties takes one bin and its neighbours keep theirs, so the bins used
    are at most ``n_bins`` and may be fewer (ages ``[50, 50, 60 x 16, 70, 70]`` in 4 bins give three:
    50, 60 and 70).

    Example:
        >>> quantile_bins(np.array([70, 50, 60, 60, 60, 60, 50, 70]), 4).tolist()
        [3, 0, 2, 2, 2, 2, 0, 3]
    """
    v = np.asarray(values, dtype=float)
    return np.minimum((n_bins * (rankdata(v) - 0.5) / len(v)).astype(int), n_bins - 1)


def epsilon_squared(h: float, n: int) -> float:
    """Kruskal-Wallis effect size ``epsilon^2 = H / (n - 1)`` (Tomczak & Tomczak 2014), in ``[0, 1]``."""
    return float(h) / (n - 1)


def _kruskal_h(x: np.ndarray, g: np.ndarray) -> float:
    """Kruskal-Wallis ``H`` alone (NaN with one group or no variation): the bootstrap's statistic."""
    from scipy.stats import kruskal

    levels = np.unique(g)
    if len(levels) < 2 or np.ptp(x) == 0:
        return float("nan")
    return float(kruskal(*[x[g == level] for level in levels]).statistic)


def _rank_biserial(x: np.ndarray, g: np.ndarray, first: object) -> float:
    """``r = 2U / (n1 n2) - 1`` of the first level against the rest; ``r > 0``: the first level scores higher."""
    from scipy.stats import mannwhitneyu

    a, b = x[g == first], x[g != first]
    return 2.0 * float(mannwhitneyu(a, b, alternative="two-sided").statistic) / (len(a) * len(b)) - 1.0


def _bootstrap_ci(stat: callable, x: np.ndarray, g: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat(x, g)`` resampling scans with replacement within each group
    (group sizes fixed, as in the design); NaN without resamples."""
    if n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(g == level) for level in np.unique(g)]
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        v = stat(x[idx], g[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _group_test(x: np.ndarray, g: np.ndarray, n_boot: int, seed: int,
                n_permutations: int = N_PERMUTATIONS) -> tuple[str, float, float, str, float, float, float, str]:
    levels = sorted(set(g.tolist()))
    order = pd.Series(x).rank().groupby(g).mean()
    top = order.idxmax()
    detail = f"highest scores: {top!s} (median {np.median(x[g == top]):.3g} vs {np.median(x):.3g} overall, n={int((g == top).sum())})"
    if len(levels) == 2:
        test, u, p = mannwhitney_test(x[g == levels[0]], x[g != levels[0]], seed=seed, n_permutations=n_permutations)
        lo, hi = _bootstrap_ci(lambda xx, gg: _rank_biserial(xx, gg, levels[0]), x, g, n_boot, seed)
        return (test, u, p, "rank_biserial", 2.0 * u / ((g == levels[0]).sum() * (g != levels[0]).sum()) - 1.0, lo, hi,
                f"{detail}; r > 0: {levels[0]!s} scores higher than {levels[1]!s}")
    test, h, p = kruskal_test(x, g, seed=seed, n_permutations=n_permutations)
    lo, hi = _bootstrap_ci(lambda xx, gg: epsilon_squared(_kruskal_h(xx, gg), len(xx)), x, g, n_boot, seed)
    return test, h, p, "epsilon_squared", epsilon_squared(h, len(x)), lo, hi, detail


def _spearman_ci(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval with the Bonett-Wright standard error ``sqrt((1 + rho^2 / 2) / (n - 3))``."""
    from scipy.stats import norm

    if n <= 3 or not np.isfinite(rho):
        return float("nan"), float("nan")
    z, se = np.arctanh(np.clip(rho, -0.999999, 0.999999)), np.sqrt((1 + rho**2 / 2) / (n - 3))
    q = norm.ppf((1 + level) / 2)
    return float(np.tanh(z - q * se)), float(np.tanh(z + q * se))


def score_tests(
    metadata: pd.DataFrame,
    score: pd.Series | np.ndarray,
    *,
    name: str = "scan_score",
    n_bootstrap: int = N_BOOTSTRAP,
    n_bins: int = N_BINS,
    seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
) -> BiasResult:
    """Compare a continuous per-scan score across the groups of every metadata column (rank tests).

    Unlike the outlier-vs-inlier tests, nothing is thresholded, so the tests keep their power when
    most or few scans are outliers. Per column (read as in :func:`classify_metadata`):

    - **categorical**, 2 groups: two-sided Mann-Whitney U; effect the rank-biserial correlation
      ``2 U / (n1 n2) - 1`` of the first group (sorted) against the second.
    - **categorical**, 3+ groups: Kruskal-Wallis H; effect ``epsilon^2 = H / (n - 1)``.
    - **numeric** (e.g. age), twice: as a continuous variable, Spearman's rho (CI: Fisher z with
      the Bonett-Wright standard error); and **binned** into ``n_bins`` quantile bins (column
      ``"<col> (binned)"``, :func:`quantile_bins`: equal values share a bin, so the bins and the p
      do not depend on the row order), Kruskal-Wallis across the bins.

    A group of fewer than 5 scans makes the rank test's p a permutation p-value (``test`` ends in
    ``_permutation``; :mod:`agg2exp_lightning.analysis.rank_tests`) instead of the chi-square or
    normal approximation.

    Effect-size CIs of the rank tests are 95 % percentile bootstraps over scans, resampled within
    each group (``n_bootstrap``; 0 leaves them NaN). ``detail`` names the group with the highest
    scores. Scans with a missing score or value are left out of that test. A column with one group
    (after dropping missing values) is skipped, with the reason. ``q`` is Benjamini-Hochberg
    within this call; :func:`joint_q` redoes it across several families.

    Args:
        metadata: one row per scan.
        score: per-scan score aligned with ``metadata`` rows (higher = more anomalous).
        name: the ``group`` column of the result (which score was tested).
        n_bootstrap: bootstrap resamples per CI.
        n_bins: quantile bins of a numeric column.
        seed: seed of the bootstrap and of the permutation p-values.
        n_permutations: label shuffles of a permutation p-value (small groups).

    Returns:
        A :class:`BiasResult` whose ``tests`` have columns ``group``, ``column``, ``kind``,
        ``test``, ``n``, ``n_groups``, ``statistic``, ``p``, ``effect``, ``effect_size``,
        ``ci_low``, ``ci_high``, ``detail``, ``q``.

    Raises:
        ValueError: ``score`` does not have one value per metadata row.

    Example:
        >>> meta = pd.DataFrame({"scanner": ["A"] * 8 + ["B"] * 8})
        >>> res = score_tests(meta, np.r_[np.arange(8.0), np.arange(8.0) + 10], n_bootstrap=0)
        >>> res.tests.loc[0, "effect_size"]
        -1.0
    """
    from scipy.stats import spearmanr

    x_all = np.asarray(score, dtype=float).reshape(-1)
    if len(x_all) != len(metadata):
        raise ValueError(f"Expected `score` to have {len(metadata)} values (one per metadata row), got {len(x_all)}")
    rows: list[tuple] = []
    skipped: list[tuple[str, str, str]] = []
    for k, col in enumerate(metadata.columns):
        kind, values, note = classify_metadata(metadata[col])
        if kind is None:
            skipped.append((name, str(col), note))
            continue
        vals = values.reset_index(drop=True)
        keep = (vals.notna() & pd.Series(np.isfinite(x_all))).to_numpy()
        x = x_all[keep]
        col_seed = seed + k
        if kind == "numeric":
            v = vals[keep].astype(float).to_numpy()
            if len(x) < 4 or np.ptp(v) == 0 or np.ptp(x) == 0:
                skipped.append((name, str(col), f"fewer than 4 scans with a score and a value, or no variation ({len(x)})"))
                continue
            res = spearmanr(x, v)
            lo, hi = _spearman_ci(float(res.statistic), len(x))
            rows.append((name, str(col), kind, "spearman", len(x), np.nan, float(res.statistic), float(res.pvalue), "spearman_rho",
                         float(res.statistic), lo, hi, "rho > 0: higher values, higher scores"))
            bins = quantile_bins(v, n_bins)
            edges = {b: f"{v[bins == b].min():.4g}-{v[bins == b].max():.4g}" for b in set(bins.tolist())}
            g = np.array([edges[b] for b in bins.tolist()])
            kind_b, col_b = "numeric (binned)", f"{col} (binned)"
        else:
            g = vals[keep].astype(str).to_numpy()
            kind_b, col_b = kind, str(col)
        n_groups = len(set(g.tolist()))
        if n_groups < 2:
            skipped.append((name, col_b, f"one group only ({g[0]!s}) among the scans with a score"))
            continue
        test, stat, p, effect, size, lo, hi, detail = _group_test(x, g, n_bootstrap, col_seed, n_permutations)
        if note:
            detail = f"{detail}; {note}"
        rows.append((name, col_b, kind_b, test, len(x), n_groups, stat, p, effect, size, lo, hi, detail))
    tests = pd.DataFrame(rows, columns=_SCORE_COLUMNS)
    tests["q"] = benjamini_hochberg(tests["p"].to_numpy(dtype=float)) if len(tests) else pd.Series(dtype=float)
    return BiasResult(tests=tests, skipped=pd.DataFrame(skipped, columns=["group", "column", "reason"]))


def joint_q(*tests: pd.DataFrame) -> list[pd.DataFrame]:
    """Benjamini-Hochberg over the ``p`` columns of several test tables together (one family).

    Returns:
        Copies of the tables with ``q`` replaced by the joint q-values.
    """
    p = np.concatenate([t["p"].to_numpy(dtype=float) for t in tests]) if tests else np.array([])
    q = benjamini_hochberg(p)
    out, start = [], 0
    for t in tests:
        t = t.copy()
        t["q"] = q[start : start + len(t)]
        start += len(t)
        out.append(t)
    return out

"""Do anomalous explanations go with poor segmentations? Spearman per class, BH across classes."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) controlling the false discovery rate.

    ``q_(i) = min_{j >= i} min(1, m * p_(j) / j)`` over the ``m`` finite p-values sorted
    ascending; NaN p-values stay NaN and do not count towards ``m``.

    Args:
        p_values: p-values in ``[0, 1]`` (NaN allowed), any shape.

    Returns:
        q-values, same shape as the input.

    Raises:
        ValueError: a finite p-value lies outside ``[0, 1]``.

    Example:
        >>> benjamini_hochberg([0.01, 0.04, 0.03, np.nan])
        array([0.03, 0.04, 0.04,  nan])
    """
    p = np.asarray(p_values, dtype=float)
    flat = p.reshape(-1)
    ok = np.isfinite(flat)
    if ((flat[ok] < 0) | (flat[ok] > 1)).any():
        raise ValueError(f"Expected `p_values` in [0, 1], got {flat[ok][(flat[ok] < 0) | (flat[ok] > 1)][:3]}")
    q = np.full_like(flat, np.nan)
    m = int(ok.sum())
    if m:
        vals = flat[ok]
        order = np.argsort(vals, kind="stable")
        scaled = vals[order] * m / np.arange(1, m + 1)
        adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
        out = np.empty(m)
        out[order] = adjusted
        q[ok] = out
    return q.reshape(p.shape)


def anomaly_dice_correlation(scores: np.ndarray, dice: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Spearman correlation between anomaly score and Dice, per class, with BH q-values.

    A negative ``rho`` means more anomalous explanations go with lower Dice. Scans where either
    value is NaN are dropped per class; with fewer than 3 pairs, or a constant score or Dice,
    ``rho`` and ``p`` are NaN (and the class does not count towards the BH correction).

    Args:
        scores: ``[N, A]`` anomaly scores (higher = more anomalous).
        dice: ``[N, A]`` Dice per scan and class.
        classes: the ``A`` class names.

    Returns:
        A frame indexed by class with columns ``rho``, ``p``, ``q``, ``n``.
    """
    scores = np.asarray(scores, dtype=float)
    dice = np.asarray(dice, dtype=float)
    if scores.shape != dice.shape or scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ValueError(f"Expected `scores` and `dice` of the same shape [N, {len(classes)}], got {scores.shape} and {dice.shape}")
    rows = []
    for i in range(len(classes)):
        ok = np.isfinite(scores[:, i]) & np.isfinite(dice[:, i])
        x, y = scores[ok, i], dice[ok, i]
        if ok.sum() < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            rows.append((np.nan, np.nan, int(ok.sum())))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = spearmanr(x, y)
        rows.append((float(res.statistic), float(res.pvalue), int(ok.sum())))
    frame = pd.DataFrame(rows, columns=["rho", "p", "n"], index=pd.Index(list(classes), name="class"))
    frame.insert(2, "q", benjamini_hochberg(frame["p"].to_numpy()))
    return frame


def mean_score_dice_correlation(scores: np.ndarray, dice: np.ndarray) -> dict[str, object]:
    """Spearman correlation, over scans, of the mean anomaly score against the mean Dice (the paper's scan-level test).

    Each scan's means are taken over the classes where the value is finite (the paper averages the 17
    per-class scores and the 17 Dice columns). Scans where either mean is NaN are left out.

    Args:
        scores: ``[N, A]`` anomaly scores (higher = more anomalous: the paper's ``decision_function``
            has the opposite sign, so its rho has the opposite sign too).
        dice: ``[N, A]`` Dice per scan and class.

    Returns:
        ``{"rho", "p", "n", "mean_score" [N], "mean_dice" [N]}``; ``rho``/``p`` NaN with fewer than 3
        scans or a constant mean.
    """
    scores = np.asarray(scores, dtype=float)
    dice = np.asarray(dice, dtype=float)
    if scores.shape != dice.shape or scores.ndim != 2:
        raise ValueError(f"Expected `scores` and `dice` of one shape [N, A], got {scores.shape} and {dice.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_score, mean_dice = np.nanmean(scores, axis=1), np.nanmean(dice, axis=1)
    ok = np.isfinite(mean_score) & np.isfinite(mean_dice)
    rho = p = float("nan")
    if ok.sum() >= 3 and np.ptp(mean_score[ok]) > 0 and np.ptp(mean_dice[ok]) > 0:
        res = spearmanr(mean_score[ok], mean_dice[ok])
        rho, p = float(res.statistic), float(res.pvalue)
    return {"rho": rho, "p": p, "n": int(ok.sum()), "mean_score": mean_score, "mean_dice": mean_dice}

"""Anomalous explanations: one Isolation Forest per class over its RoI mass shares.

For class ``a`` each scan is the vector ``(e_{b->a})_b`` of shares of ``a``'s attribution mass
over the regions ``b``. An :class:`sklearn.ensemble.IsolationForest` (``random_state=123``, every
other setting at scikit-learn's default) is fitted per class, on a reference cohort if one is
given (the paper uses the training scans) or else on the audited scans themselves.

Sign convention: the **anomaly score is ``-decision_function``**, so *higher = more anomalous*;
a scan is an **outlier** where ``predict == -1`` (with the default ``contamination="auto"`` this is
``decision_function < 0``, i.e. anomaly score > 0).

Missing shares: a NaN share in a row that has other finite shares means the region was absent
from that scan (the explanation engine leaves such shares undefined); it enters the forest as 0,
since none of the class's attribution lies there. A scan with no finite share for a class (the
class was not predicted, so its map is all zero) gets a NaN score and is not flagged for it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

log = logging.getLogger(__name__)

#: The seed of the per-class Isolation Forests, as in the paper.
DEFAULT_RANDOM_STATE = 123


@dataclass(frozen=True)
class AnomalyResult:
    """Per-class anomaly scores of a cohort.

    Attributes:
        classes: explained class names (length ``A``).
        scores: ``[N, A]`` anomaly scores, ``-decision_function`` (higher = more anomalous);
            NaN where the scan has no share for the class or no forest could be fitted.
        outliers: ``[N, A]`` bool, ``predict == -1``.
        n_reference: ``[A]`` number of reference scans each forest was fitted on (0 = not fitted).
    """

    classes: tuple[str, ...]
    scores: np.ndarray
    outliers: np.ndarray
    n_reference: np.ndarray

    @property
    def any_outlier(self) -> np.ndarray:
        """``[N]`` bool: outlier for at least one class (the union over classes)."""
        return self.outliers.any(axis=1)


def _features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(features with absent regions as 0, rows that can be scored)`` of ``[N, B]`` shares."""
    scored = np.isfinite(x).any(axis=1)
    return np.where(np.isnan(x) & scored[:, None], 0.0, x), scored


def class_anomaly_scores(
    mass: np.ndarray,
    classes: Sequence[str],
    reference_mass: np.ndarray | None = None,
    *,
    random_state: int = DEFAULT_RANDOM_STATE,
) -> AnomalyResult:
    """Fit one Isolation Forest per class and score every scan.

    Args:
        mass: ``[N, A, B]`` mass shares of the audited scans.
        classes: the ``A`` explained class names.
        reference_mass: ``[M, A, B]`` shares of the reference scans to fit on; ``None`` fits on
            ``mass`` itself.
        random_state: seed of every forest.

    Returns:
        Scores and outlier flags; see :class:`AnomalyResult`.

    Raises:
        ValueError: shapes do not agree.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> res = class_anomaly_scores(rng.dirichlet(np.ones(3), size=(20, 1)), ["a"])
        >>> res.scores.shape, res.outliers.dtype
        ((20, 1), dtype('bool'))
    """
    mass = np.asarray(mass, dtype=float)
    if mass.ndim != 3 or mass.shape[1] != len(classes):
        raise ValueError(f"Expected `mass` of shape [N, {len(classes)}, B], got {mass.shape}")
    ref = mass if reference_mass is None else np.asarray(reference_mass, dtype=float)
    if ref.ndim != 3 or ref.shape[1:] != mass.shape[1:]:
        raise ValueError(f"Expected `reference_mass` of shape [M, {mass.shape[1]}, {mass.shape[2]}], got {ref.shape}")
    n, a_count, _ = mass.shape
    scores = np.full((n, a_count), np.nan)
    outliers = np.zeros((n, a_count), dtype=bool)
    n_ref = np.zeros(a_count, dtype=int)
    for i, name in enumerate(classes):
        ref_x, ref_ok = _features(ref[:, i, :])
        fit_x = ref_x[ref_ok]
        if len(fit_x) < 2:
            log.warning("class %r: %d reference scans with shares, need 2; no anomaly scores", name, len(fit_x))
            continue
        forest = IsolationForest(random_state=random_state).fit(fit_x)
        n_ref[i] = len(fit_x)
        feats, ok = _features(mass[:, i, :])
        if ok.any():
            x = feats[ok]
            scores[ok, i] = -forest.decision_function(x)
            outliers[ok, i] = forest.predict(x) == -1
    return AnomalyResult(classes=tuple(classes), scores=scores, outliers=outliers, n_reference=n_ref)


def extreme_cases(scores: np.ndarray, ids: Sequence[str], classes: Sequence[str], *, k: int = 3) -> pd.DataFrame:
    """Top-``k`` and bottom-``k`` scans by anomaly score, per class.

    Args:
        scores: ``[N, A]`` anomaly scores (higher = more anomalous); NaN scores are skipped.
        ids: the ``N`` scan ids.
        classes: the ``A`` class names.
        k: how many scans at each end.

    Returns:
        Columns ``class``, ``end`` (``"most_anomalous"`` / ``"least_anomalous"``), ``rank``
        (1 = most extreme), ``id``, ``score``. Ties keep the table order.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(ids), len(classes)):
        raise ValueError(f"Expected `scores` of shape {(len(ids), len(classes))}, got {scores.shape}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"Expected `k` to be a positive integer, got {k!r}")
    rows = []
    for i, name in enumerate(classes):
        valid = np.flatnonzero(np.isfinite(scores[:, i]))
        order = valid[np.argsort(-scores[valid, i], kind="stable")]
        for end, picks in (("most_anomalous", order[:k]), ("least_anomalous", order[::-1][:k])):
            rows += [(name, end, r + 1, ids[j], float(scores[j, i])) for r, j in enumerate(picks)]
    return pd.DataFrame(rows, columns=["class", "end", "rank", "id", "score"])

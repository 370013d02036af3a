"""Anomalous explanations: one anomaly detector per class over its RoI mass shares.

For class ``a`` each scan is the vector ``(e_{b->a})_b`` of shares of ``a``'s attribution mass
over the regions ``b``. A detector (:mod:`agg2exp_lightning.analysis.detectors`; by default the
paper's :class:`sklearn.ensemble.IsolationForest`, ``random_state=123``, every other setting at
scikit-learn's default) is fitted per class, on a reference cohort if one is given (the paper uses
the training scans) or else on the audited scans themselves.

Sign convention: the **anomaly score is the detector's score** (``-decision_function`` for the
scikit-learn detectors), so *higher = more anomalous*; a scan is an **outlier** where the score is
above 0 (the forest's ``predict == -1``: with the default ``contamination="auto"`` this is
``decision_function < 0``).

Missing shares: a NaN share in a row that has other finite shares means the region was absent
from that scan (the explanation engine leaves such shares undefined); it enters the forest as 0,
since none of the class's attribution lies there. A scan with no finite share for a class (the
class was not predicted, so its map is all zero) gets a NaN score and is not flagged for it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from agg2exp_lightning.analysis.detectors import DEFAULT_DETECTOR, DEFAULT_SCORE_DETECTOR, make_detector
from agg2exp_lightning.analysis.wording import SHARE, describe_against_reference, is_unchanged
from agg2exp_lightning.utils.options import positive_int

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


#: Decimals the shares keep as forest features: differences below 1e-12 are floating-point rounding (the order of
#: a sum), and a forest would split on them (its thresholds are drawn between a node's minimum and maximum), so two
#: numerically equal cohorts reached by different code paths would get different outliers.
FEATURE_DECIMALS = 12
#: Anomaly scores within this of the forest's threshold count as ties with it (not outliers).
TIE_TOLERANCE = 1e-9


def _features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(features with absent regions as 0, rows that can be scored)`` of ``[N, B]`` shares."""
    scored = np.isfinite(x).any(axis=1)
    return np.round(np.where(np.isnan(x) & scored[:, None], 0.0, x), FEATURE_DECIMALS), scored


def class_anomaly_scores(
    mass: np.ndarray,
    classes: Sequence[str],
    reference_mass: np.ndarray | None = None,
    *,
    random_state: int = DEFAULT_RANDOM_STATE,
    detector: str = DEFAULT_DETECTOR,
) -> AnomalyResult:
    """Fit one detector per class and score every scan.

    Args:
        mass: ``[N, A, B]`` mass shares of the audited scans.
        classes: the ``A`` explained class names.
        reference_mass: ``[M, A, B]`` shares of the reference scans to fit on; ``None`` fits on
            ``mass`` itself.
        random_state: seed of every detector.
        detector: a name of :data:`~agg2exp_lightning.analysis.detectors.DETECTORS`.

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
        fitted = make_detector(detector, random_state).fit(fit_x)
        n_ref[i] = len(fit_x)
        feats, ok = _features(mass[:, i, :])
        if ok.any():
            x = feats[ok]
            scores[ok, i] = fitted.score(x)
            # forest.predict's rule (decision < 0), less a tolerance: a scan tied with the threshold, e.g. every scan
            # of a class whose shares do not vary, is not an outlier whatever the rounding of the tie
            outliers[ok, i] = scores[ok, i] > TIE_TOLERANCE
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
    positive_int("k", k)
    rows = []
    for i, name in enumerate(classes):
        valid = np.flatnonzero(np.isfinite(scores[:, i]))
        order = valid[np.argsort(-scores[valid, i], kind="stable")]
        for end, picks in (("most_anomalous", order[:k]), ("least_anomalous", order[::-1][:k])):
            rows += [(name, end, r + 1, ids[j], float(scores[j, i])) for r, j in enumerate(picks)]
    return pd.DataFrame(rows, columns=["class", "end", "rank", "id", "score"])


# ---- one calibrated score per scan ---------------------------------------------------------------------
#: Share of clean scans the scan-level flag may raise (the default ``contamination``).
DEFAULT_CONTAMINATION = 0.05
#: Folds of the cross-fitting.
DEFAULT_FOLDS = 5
#: Fewest reference scans with shares a class needs for cross-fitted forests (2 per fold).
MIN_REFERENCE_SCANS = 2 * DEFAULT_FOLDS
#: How the per-class p-value of a score beyond every reference score is read: ``"conformal"`` (it stops at
#: ``1 / (M + 1)``) or ``"exponential"`` (the default: an exponential tail fitted to the top reference scores).
SCORE_TAILS = ("exponential", "conformal")
#: The default of ``score_tail``.
DEFAULT_SCORE_TAIL = SCORE_TAILS[0]


def scan_score_description(score_detector: str = DEFAULT_SCORE_DETECTOR, score_tail: str = DEFAULT_SCORE_TAIL) -> str:
    """How the scan-level score is built with ``score_detector`` and ``score_tail`` (written into ``summary.json``)."""
    from agg2exp_lightning.analysis.detectors import get_detector

    label = get_detector(score_detector).label.rstrip("s")
    beyond = (" (beyond every reference score: an exponential tail fitted to the largest reference scores)"
              if score_tail == "exponential" else "")
    return (f"per evidence family and class: conformal p-value of the {label} score against cross-fitted reference "
            f"scores{beyond} (shares: a class the scan lacks counts as most anomalous; the other families: left out where not "
            "computable); Fisher's -2 sum log p over the scored families and classes, "
            "as -log10 of its chi-square tail (higher = more anomalous); calibrated p = share of reference scans "
            "at least as anomalous (conformal)")


#: How the scan-level score is built with the default detector (written into ``summary.json``).
SCAN_SCORE_DESCRIPTION = scan_score_description()


@dataclass(frozen=True)
class ScanAnomalyResult:
    """One calibrated anomaly score per scan (see :func:`scan_anomaly_scores`).

    Attributes:
        classes: explained class names (length ``A``).
        class_p: ``[N, A]`` per-class conformal p-values (small = unusual for that class); NaN
            where the class could not be scored (no forest).
        score: ``[N]`` scan-level score ``-log10`` of Fisher's combination (higher = more
            anomalous); NaN for a scan with no scored class.
        p_value: ``[N]`` calibrated p-value: ``(1 + #reference scores >= score) / (M + 1)``.
        flagged: ``[N]`` ``p_value <= contamination``.
        reference_score: ``[M]`` cross-fitted scores of the reference scans (the null distribution).
        reference_class_p: ``[M, A]`` their per-class p-values (leave-one-out).
        threshold: the score a scan must exceed to be flagged (``inf``: no scan can be).
        contamination: the share of clean scans the flag may raise.
        expected_fpr: ``floor(contamination (M + 1)) / (M + 1)``: the probability that a clean scan,
            exchangeable with the reference scans, is flagged.
        heldout_class_fpr: share of reference scans that a forest **not fitted on them** calls an
            outlier (``predict == -1``) for at least one class: the false-positive rate of the
            per-class "outlier for any class" rule, estimated by cross-fitting.
        self_reference: the audited scans were their own reference (no separate reference set).
        family_p: evidence family -> ``[N, A]`` per-class p-values of that family (the shares'
            are ``class_p``; NaN where the family was left out for the scan and class).
        reference_family_p: family -> ``[M, A]`` the reference scans' (leave-one-out).
        families: the evidence families combined into the score, shares first when used.
    """

    classes: tuple[str, ...]
    class_p: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    flagged: np.ndarray
    reference_score: np.ndarray
    reference_class_p: np.ndarray
    threshold: float
    contamination: float
    expected_fpr: float
    heldout_class_fpr: float
    self_reference: bool
    family_p: dict[str, np.ndarray] = field(default_factory=dict)
    reference_family_p: dict[str, np.ndarray] = field(default_factory=dict)
    families: tuple[str, ...] = ("shares",)

    @property
    def n_reference(self) -> int:
        """Number of reference scans with a finite score (the calibration set)."""
        return int(np.isfinite(self.reference_score).sum())


def check_score_tail(value: object, name: str = "score_tail") -> str:
    """``value`` as one of :data:`SCORE_TAILS` (the one check the audit, its settings and the monitor share).

    Raises:
        ValueError: naming ``name``, the valid tails and a "did you mean".
    """
    from agg2exp_lightning.utils.options import look_up_option

    return look_up_option(name, value, SCORE_TAILS)


def check_contamination(value: object, name: str = "contamination") -> float:
    """``value`` as a float in ``(0, 0.5]``.

    Raises:
        ValueError: naming ``name``, when ``value`` is not a number in ``(0, 0.5]``.
    """
    try:
        c = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        c = float("nan")
    if isinstance(value, bool) or not (0.0 < c <= 0.5):
        raise ValueError(f"Expected `{name}` to be a number in (0, 0.5] (the share of clean scans that may be flagged), got {value!r}")
    return c


def fisher_combination(p: np.ndarray) -> np.ndarray:
    """``-log10`` of Fisher's combined p-value over the finite entries of each row of ``p``.

    ``X = -2 sum_a log p_a`` over the ``k`` finite p-values of a row is referred to a chi-square
    with ``2k`` degrees of freedom, so rows with different numbers of scored classes land on one
    scale. Rows without a finite p-value give NaN.

    Args:
        p: ``[N, A]`` p-values in ``(0, 1]`` (NaN allowed).

    Returns:
        ``[N]`` scores, higher = stronger combined evidence.
    """
    from scipy.special import gammaln, logsumexp

    p = np.asarray(p, dtype=float)
    ok = np.isfinite(p)
    k = ok.sum(axis=1)
    x = -2.0 * np.where(ok, np.log(np.where(ok, p, 1.0)), 0.0).sum(axis=1)
    out = np.full(len(p), np.nan)
    for r in np.flatnonzero(k > 0):
        # a chi-square with 2k degrees of freedom has sf(x) = exp(-x/2) sum_{i<k} (x/2)^i / i!: its log in closed
        # form, finite however small the p-values (scipy's logsf underflows to -inf near x ~ 1500)
        i = np.arange(k[r])
        half = x[r] / 2.0
        terms = np.where(i == 0, 0.0, i * np.log(half) if half > 0 else -np.inf) - gammaln(i + 1.0)
        out[r] = (half - logsumexp(terms)) / np.log(10.0) + 0.0  # + 0.0: no -0.0 for p = 1
    return out


def conformal_p(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(1 + #{reference >= s}) / (M + 1)`` for each ``s`` in ``scores`` (NaN stays NaN).

    ``reference`` holds the ``M`` finite (or ``+inf``) scores of clean scans; ``+inf`` in either
    input is a maximally anomalous score.
    """
    ref = np.sort(np.asarray(reference, dtype=float)[~np.isnan(reference)])
    s = np.asarray(scores, dtype=float)
    out = np.full(s.shape, np.nan)
    ok = ~np.isnan(s)
    out[ok] = (1.0 + len(ref) - np.searchsorted(ref, s[ok], side="left")) / (len(ref) + 1.0)
    return out


def _loo_p(scores: np.ndarray) -> np.ndarray:
    """Each finite/inf score's conformal p against all the others (leave-one-out)."""
    s = np.asarray(scores, dtype=float)
    out = np.full(s.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(s))
    if len(ok) < 2:
        return out
    vals = s[ok]
    ge = (vals[None, :] >= vals[:, None]).sum(axis=1) - 1  # others at least as anomalous
    out[ok] = (1.0 + ge) / len(ok)
    return out


#: Reference scores the exponential tail is fitted to (the largest ``TAIL_K``; fewer finite ones: conformal p).
TAIL_K = 5
#: Smallest per-class p-value the tail gives (keeps Fisher's sum finite).
_P_FLOOR = 1e-300


def tail_p(scores: np.ndarray, reference: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Conformal p-values ``p`` of ``scores`` extended beyond the largest ``reference`` score by an exponential tail.

    A conformal p-value cannot go below ``1 / (M + 1)``, however far a score lies beyond the reference scans,
    so a fault that moves one feature of one class far counts no more than a clean scan's most unusual class.
    Beyond the largest reference score ``r_1`` the tail is read from the reference itself (peaks over a
    threshold with an exponential tail, a generalised Pareto of shape 0): with ``u`` the ``TAIL_K``-th largest
    reference score and ``beta`` the mean excess of the larger ones over ``u``,
    ``p = min(p, exp(-(s - r_1) / beta) / (M + 1))``, never below ``1e-300``. Scores within the reference's
    range, ``+inf`` (a class the scan lacks: calibrated by how often the reference lacks it) and NaN keep
    ``p``; so do all scores when the reference has fewer than ``TAIL_K + 1`` finite scores or no spread at
    its top.

    Args:
        scores: ``[N]`` scores (higher = more anomalous).
        reference: ``[M]`` the reference scores they were compared with (NaN and ``+inf`` allowed).
        p: ``[N]`` their conformal p-values against ``reference``.

    Returns:
        ``[N]`` p-values, at most ``p``.
    """
    s, p = np.asarray(scores, dtype=float), np.asarray(p, dtype=float)
    ref = np.asarray(reference, dtype=float)
    m = int((~np.isnan(ref)).sum())
    top = np.sort(ref[np.isfinite(ref)])[::-1]
    if len(top) < TAIL_K + 1:
        return p
    beta = float(np.mean(top[: TAIL_K - 1] - top[TAIL_K - 1]))
    far = np.isfinite(s) & (s > top[0])
    if beta <= 0 or not far.any():
        return p
    out = p.copy()
    log_tail = -(s[far] - top[0]) / beta - np.log(m + 1.0)
    out[far] = np.minimum(p[far], np.maximum(np.exp(log_tail), _P_FLOOR))
    return out


def _loo_tail_p(scores: np.ndarray, tail: str) -> np.ndarray:
    """:func:`_loo_p`; the one finite score beyond all the others (if any) extended by :func:`tail_p` against them."""
    p = _loo_p(scores)
    s = np.asarray(scores, dtype=float)
    if tail == "conformal" or not np.isfinite(s).any():
        return p
    j = int(np.nanargmax(np.where(np.isfinite(s), s, -np.inf)))
    others = np.delete(s, j)
    if s[j] > np.max(others[~np.isnan(others)], initial=-np.inf):  # strictly beyond every other score, +inf included
        p[j] = tail_p(s[j : j + 1], others, p[j : j + 1])[0]
    return p


def cross_fit_folds(m: int, n_folds: int, seed: int) -> np.ndarray:
    """``[m]`` fold index of each reference scan: balanced sizes, order seeded by ``seed``."""
    return np.random.default_rng(seed).permutation(np.arange(m) % n_folds)


def _cross_fit_class(
    ref: np.ndarray, audited: np.ndarray | None, *, folds: np.ndarray, random_state: int, detector: str = DEFAULT_DETECTOR,
    tail: str = "conformal",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Cross-fitted scores of one class's shares.

    Returns ``(oof [M], oof_outlier [M], audited_p [N] or None)``: each reference scan's score from
    the forest of the folds it is not in (``+inf`` where the scan lacks the class), whether that
    forest calls it an outlier, and the audited scans' cross-conformal p-values (each fold's
    forest scores the audited scan and compares it with that fold's held-out scores). ``None``
    when a fold's training part has fewer than 2 scans with shares.
    """
    ref_x, ref_ok = _features(ref)
    aud = None if audited is None else _features(audited)
    return _cross_fit(ref_x, ref_ok, aud, folds=folds, random_state=random_state, absent_most_anomalous=True, detector=detector,
                      tail=tail)


def _cross_fit(
    ref_x: np.ndarray, ref_ok: np.ndarray, audited: tuple[np.ndarray, np.ndarray] | None, *, folds: np.ndarray,
    random_state: int, absent_most_anomalous: bool, detector: str = DEFAULT_DETECTOR, tail: str = "conformal",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """:func:`_cross_fit_class` on ready features ``[M, F]`` with the rows that can be scored.

    ``absent_most_anomalous``: a row that cannot be scored counts as ``+inf`` (a class the scan lacks,
    the shares' rule); otherwise it is left out: no reference score (NaN, not counted in ``M``) and
    no p-value for an audited scan (the evidence families' rule). ``tail="exponential"``: an audited scan
    above every held-out reference score in every fold gets :func:`tail_p` of its mean score over the folds
    against all the held-out reference scores.
    """
    fill = np.inf if absent_most_anomalous else np.nan
    oof = np.full(len(ref_x), fill)
    oof_out = ~ref_ok
    k = int(folds.max()) + 1
    counts = None
    if audited is not None:
        aud_x, aud_ok = audited
        counts = np.zeros(len(aud_x))
        aud_mean = np.zeros(len(aud_x))
    for f in range(k):
        train, test = ref_ok & (folds != f), folds == f
        if train.sum() < 2:
            return None
        fitted = make_detector(detector, random_state).fit(ref_x[train])
        scored = test & ref_ok
        n_ref = int(scored.sum())
        rows = [ref_x[scored]] + ([aud_x[aud_ok]] if counts is not None else [])
        both = np.concatenate(rows) if sum(len(r) for r in rows) else np.empty((0, ref_x.shape[1]))
        s = fitted.score(both) if len(both) else np.empty(0)  # one pass over the trees
        oof[scored] = s[:n_ref]
        oof_out[scored] = s[:n_ref] > 0  # the detector's outlier call (forest: predict == -1 <=> decision_function < 0)
        if counts is not None:
            aud_s = np.full(len(aud_x), fill)
            aud_s[aud_ok] = s[n_ref:]
            counts += (oof[test][None, :] >= aud_s[:, None]).sum(axis=1)  # NaN reference scores never count
            aud_mean += aud_s / k
    audited_p = None
    if counts is not None:
        m = len(ref_x) if absent_most_anomalous else int(ref_ok.sum())
        audited_p = (1.0 + counts) / (m + 1.0)
        if tail != "conformal":
            beyond = counts == 0
            audited_p[beyond] = tail_p(aud_mean[beyond], oof, audited_p[beyond])
        if not absent_most_anomalous:
            audited_p[~aud_ok] = np.nan
    return oof, oof_out, audited_p


def scan_anomaly_scores(
    mass: np.ndarray,
    classes: Sequence[str],
    reference_mass: np.ndarray | None = None,
    *,
    contamination: float = DEFAULT_CONTAMINATION,
    n_folds: int = DEFAULT_FOLDS,
    random_state: int = DEFAULT_RANDOM_STATE,
    families: Mapping[str, tuple[np.ndarray, np.ndarray | None]] | None = None,
    shares: bool = True,
    detector: str = DEFAULT_DETECTOR,
    score_detector: str = DEFAULT_SCORE_DETECTOR,
    score_tail: str = DEFAULT_SCORE_TAIL,
) -> ScanAnomalyResult:
    """One anomaly score per scan on a calibrated scale, and a flag with a known false-positive rate.

    Design. The paper's per-class Isolation Forest scores live on class-specific scales, and a
    scan is an "outlier" when *any* of ``A`` forests says so, so the share of clean scans flagged
    grows with the number of classes (27 of 32 scans in one audit). Here each class's score is
    first turned into a tail probability against clean reference scans, which puts every class
    on the same ``[0, 1]`` scale:

    1. **Cross-fitting.** The reference scans are split into ``n_folds`` folds; for each fold a
       detector (``score_detector``: by default the robust distance, a mean squared robust z-score
       per feature) is fitted on the other folds and scores the held-out fold, so every reference
       score comes from a detector that never saw that scan (in-sample scores are optimistic: a
       forest isolates its own training points late, a median sits close to its own rows).
    2. **Conformal p-values per class.** An audited scan is scored by each fold's detector and
       compared with that fold's held-out scores (cross-conformal): ``p_a = (1 + #{reference
       scores >= the scan's}) / (M + 1)``. For a clean scan exchangeable with the reference,
       ``p_a`` is (nearly) uniform whatever the detector. A class the scan does not contain while
       reference scans do counts as more anomalous than any score (``+inf``), calibrated by how
       often reference scans lack it too; this catches faults that remove a structure.
    3. **Combination.** Fisher's ``X = -2 sum_a log p_a`` pools evidence over classes, so a
       fault that moves several classes a little counts, and its chi-square tail with ``2k``
       degrees of freedom puts scans with different numbers of scored classes on one scale. The
       score is ``-log10`` of that tail. (Min-p or the Cauchy combination are driven by the
       single smallest p-value, which conformal p-values saturate at ``1 / (M + 1)``, so many
       clean scans would tie at the top.)
    4. **Calibration.** Fisher's tail assumes independent classes, which they are not; so the
       score is not read as a p-value. Instead the reference scans get the same score (their
       per-class p-values leave themselves out) and an audited scan's calibrated p-value is the
       share of reference scans at least as anomalous, whatever the dependence between classes.
       The guarantee is approximate, not exact: the reference scores are cross-fitted (leave-one-
       fold-out forests, leave-one-out per-class p-values) while an audited scan is scored by every
       fold's forest (cross-conformal), so the two are exchangeable only approximately. For clean
       scans exchangeable with the reference the flag ``p <= contamination`` raises on about
       ``expected_fpr = floor(c (M + 1)) / (M + 1) <= c`` of them; in simulation the rate came out
       at or below it (``tests/analysis/test_anomaly.py``: 0.176 for a promised 0.20 over 40
       draws). The reference must be like the audited clean scans: the model's training scans are
       not (:mod:`agg2exp_lightning.audit.reference`).

    Without a reference set the audited scans are their own reference (each scored by forests
    not fitted on it, compared with the others): the flag then marks the most unusual scans of
    the cohort, not scans unlike a clean population.

    Args:
        mass: ``[N, A, B]`` mass shares of the audited scans (NaN as in :func:`class_anomaly_scores`).
        classes: the ``A`` class names.
        reference_mass: ``[M, A, B]`` shares of clean reference scans (e.g. the training split);
            ``None``: the audited scans themselves.
        contamination: share of clean scans the flag may raise, in ``(0, 0.5]``.
        n_folds: cross-fitting folds (at least 2).
        random_state: seed of the detectors and of the fold assignment.
        families: further evidence (:mod:`~agg2exp_lightning.analysis.evidence`): family name ->
            ``(audited [N, A, F], reference [M, A, F] or None)`` detector features (NaN rows: not
            computable, left out for that scan and class). Each family and class gets its own
            cross-fitted detectors and p-values (``family_p``), combined with the shares' in step 3.
        shares: whether the shares' p-values enter the score (``False``: the families alone).
        detector: the per-class detector of the paper's rule "outlier for any class", a name of
            :data:`~agg2exp_lightning.analysis.detectors.DETECTORS`: only ``heldout_class_fpr`` depends on it.
        score_detector: the detector of every family's and class's score (the scores, not the
            calibration, depend on it); default :class:`~agg2exp_lightning.analysis.detectors.RobustDistance`.
        score_tail: ``"exponential"`` (default): a per-class score beyond every reference score gets the
            p-value of an exponential tail fitted to the top reference scores (:func:`tail_p`), so a feature far
            outside clean variation counts for more than ``1 / (M + 1)``; ``"conformal"``: it stops there. The
            calibration (step 4) is conformal either way.

    Returns:
        A :class:`ScanAnomalyResult`.

    Raises:
        ValueError: shapes disagree, ``contamination`` outside ``(0, 0.5]``, or fewer than
            ``2 n_folds`` reference scans (naming how many there are).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.dirichlet(np.ones(4) * 20, size=(40, 2))
        >>> res = scan_anomaly_scores(rng.dirichlet(np.ones(4) * 20, size=(5, 2)), ["a", "b"], ref)
        >>> res.score.shape, res.expected_fpr <= 0.05
        ((5,), True)
    """
    contamination = check_contamination(contamination)
    score_tail = check_score_tail(score_tail)
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"Expected `n_folds` to be an integer >= 2, got {n_folds!r}")
    mass = np.asarray(mass, dtype=float)
    if mass.ndim != 3 or mass.shape[1] != len(classes):
        raise ValueError(f"Expected `mass` of shape [N, {len(classes)}, B], got {mass.shape}")
    self_reference = reference_mass is None
    ref = mass if self_reference else np.asarray(reference_mass, dtype=float)
    if ref.ndim != 3 or ref.shape[1:] != mass.shape[1:]:
        raise ValueError(f"Expected `reference_mass` of shape [M, {mass.shape[1]}, {mass.shape[2]}], got {ref.shape}")
    m = len(ref)
    what = "audited scans (no reference set)" if self_reference else "reference scans"
    if m < 2 * n_folds:
        from agg2exp_lightning.analysis.detectors import get_detector

        raise ValueError(f"Expected at least {2 * n_folds} {what} to cross-fit {n_folds} folds of {get_detector(score_detector).label}, got {m}")
    folds = cross_fit_folds(m, n_folds, random_state)
    n, a_count = len(mass), len(classes)
    class_p = np.full((n, a_count), np.nan)
    ref_p = np.full((m, a_count), np.nan)
    oof_outlier = np.zeros((m, a_count), dtype=bool)
    for i, name in enumerate(classes):
        fitted = _cross_fit_class(ref[:, i, :], None if self_reference else mass[:, i, :], folds=folds, random_state=random_state,
                                  detector=score_detector, tail=score_tail)
        if fitted is None:
            log.warning("class %r: too few %s with shares to cross-fit %d folds; left out of the scan-level score", name, what, n_folds)
            continue
        oof, oof_out, aud_p = fitted
        ref_p[:, i] = _loo_tail_p(oof, score_tail)
        if detector != score_detector:  # the paper's rule is the per-class detector's own call
            oof_out = _cross_fit_class(ref[:, i, :], None, folds=folds, random_state=random_state, detector=detector)[1]
        oof_outlier[:, i] = oof_out
        class_p[:, i] = ref_p[:, i] if self_reference else aud_p
    family_p, reference_family_p = {}, {}
    for fam, (aud_x, ref_x) in dict(families or {}).items():
        aud_x = np.asarray(aud_x, dtype=float)
        ref_x = aud_x if self_reference else np.asarray(ref_x, dtype=float)
        if aud_x.shape[:2] != (n, a_count) or ref_x.shape[:2] != (m, a_count) or aud_x.shape[2:] != ref_x.shape[2:]:
            raise ValueError(f"Expected evidence family {fam!r} of shapes [{n}, {a_count}, F] and [{m}, {a_count}, F], "
                             f"got {aud_x.shape} and {ref_x.shape}")
        fp, rp = np.full((n, a_count), np.nan), np.full((m, a_count), np.nan)
        for i, name in enumerate(classes):
            r_ok = np.isfinite(ref_x[:, i]).all(axis=1)
            a_ok = np.isfinite(aud_x[:, i]).all(axis=1)
            fitted = _cross_fit(np.nan_to_num(ref_x[:, i]), r_ok, None if self_reference else (np.nan_to_num(aud_x[:, i]), a_ok),
                                folds=folds, random_state=random_state, absent_most_anomalous=False, detector=score_detector,
                                tail=score_tail)
            if fitted is None:
                log.warning("class %r: too few %s with %s evidence to cross-fit %d folds; left out of the scan-level score",
                            name, what, fam, n_folds)
                continue
            rp[:, i] = _loo_tail_p(fitted[0], score_tail)
            fp[:, i] = rp[:, i] if self_reference else fitted[2]
        family_p[fam], reference_family_p[fam] = fp, rp
    used_ref = ([ref_p] if shares else []) + list(reference_family_p.values())
    used_aud = ([class_p] if shares else []) + list(family_p.values())
    if not used_ref:
        raise ValueError("Expected the shares or at least one evidence family in the scan-level score, got none")
    ref_score = fisher_combination(np.concatenate(used_ref, axis=1))
    score = ref_score.copy() if self_reference else fisher_combination(np.concatenate(used_aud, axis=1))
    if self_reference:
        p_value = _loo_p(ref_score)
        calib = ref_score[np.isfinite(ref_score)]
        m_cal = max(len(calib) - 1, 0)  # each scan is compared with the others
    else:
        p_value = conformal_p(score, ref_score)
        calib = ref_score[np.isfinite(ref_score)]
        m_cal = len(calib)
    k = int(np.floor(contamination * (m_cal + 1) + 1e-9))
    # flagged <=> score > threshold: the k-th largest reference score (self-reference: the
    # (k+1)-th of all scores, since each scan is compared with the others only)
    rank = k if self_reference else k - 1
    threshold = float(np.sort(calib)[::-1][rank]) if k >= 1 and rank < len(calib) else float("inf")
    flagged = np.isfinite(p_value) & (p_value <= contamination + 1e-12)
    if k == 0:
        log.warning("%d %s cannot calibrate a false-positive rate of %g: no scan can be flagged (need at least %d)",
                    m_cal, what, contamination, int(np.ceil(1 / contamination)) - 1)
    scored_ref = np.isfinite(ref_p).any(axis=1)
    heldout = float(oof_outlier[scored_ref].any(axis=1).mean()) if scored_ref.any() else float("nan")
    return ScanAnomalyResult(
        classes=tuple(classes), class_p=class_p, score=score, p_value=p_value, flagged=flagged,
        reference_score=ref_score, reference_class_p=ref_p, threshold=threshold, contamination=contamination,
        expected_fpr=k / (m_cal + 1), heldout_class_fpr=heldout, self_reference=self_reference,
        family_p=family_p, reference_family_p=reference_family_p,
        families=(("shares",) if shares else ()) + tuple(family_p),
    )


def moved_regions(shares: np.ndarray, reference: np.ndarray, regions: Sequence[str], *, k: int = 2) -> list[dict[str, object]]:
    """The regions whose share moved most against the reference distribution, for one scan and class.

    Each region's share is placed in the reference scans' shares by a two-sided conformal tail,
    ``min((1 + #{ref >= x}), (1 + #{ref <= x})) / (M + 1)`` (absent regions count as 0, as in
    the forests); the ``k`` smallest tails come first, ties broken by the distance to the
    reference median.

    Args:
        shares: ``[B]`` the scan's shares of one class over the regions.
        reference: ``[M, B]`` the reference scans' shares of that class.
        regions: the ``B`` region names.
        k: how many regions to return.

    Returns:
        ``[{"region", "share", "reference_median", "direction" ("up"/"down"), "tail"}]``.
    """
    x = np.nan_to_num(np.asarray(shares, dtype=float), nan=0.0)
    ref, ok = _features(np.asarray(reference, dtype=float))
    ref = ref[ok]
    if not len(ref):
        return []
    med = np.median(ref, axis=0)
    above = (1 + (ref >= x).sum(axis=0)) / (len(ref) + 1)
    below = (1 + (ref <= x).sum(axis=0)) / (len(ref) + 1)
    tail = np.minimum(above, below)
    order = np.lexsort((-np.abs(x - med), tail))[:k]
    return [{"region": regions[j], "share": float(x[j]), "reference_median": float(med[j]),
             "direction": "up" if x[j] >= med[j] else "down", "tail": float(tail[j])} for j in order]


def moved_features(values: np.ndarray, reference: np.ndarray, family: str, cls: str, *, k: int = 2) -> list[dict[str, object]]:
    """The features of an evidence family that moved most against the reference, for one scan and class.

    As :func:`moved_regions`: a two-sided conformal tail of each feature among the reference scans'
    finite values, smallest first, ties broken by the relative distance to the reference median.

    Args:
        values: ``[F]`` the scan's features (raw, as recorded).
        reference: ``[M, F]`` the reference scans' features (NaN rows are left out).
        family: the family (:data:`~agg2exp_lightning.analysis.evidence.FAMILIES`).
        cls: the class name (goes into the feature's words).
        k: how many features to return.

    Returns:
        ``[{"feature", "words", "unit", "value", "reference_median", "tail"}]``.
    """
    from agg2exp_lightning.analysis.evidence import FAMILIES

    x = np.asarray(values, dtype=float)
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref).all(axis=1)]
    if not len(ref) or not np.isfinite(x).all():
        return []
    med = np.median(ref, axis=0)
    above = (1 + (ref >= x).sum(axis=0)) / (len(ref) + 1)
    below = (1 + (ref <= x).sum(axis=0)) / (len(ref) + 1)
    tail = np.minimum(above, below)
    rel = np.abs(x - med) / np.where(np.abs(med) > 0, np.abs(med), 1.0)
    order = np.lexsort((-rel, tail))[:k]
    feats = FAMILIES[family]
    return [{"feature": feats[j].key, "words": feats[j].words.format(cls=cls), "unit": feats[j].unit, "value": float(x[j]),
             "reference_median": float(med[j]), "tail": float(tail[j])} for j in order]


def anomaly_worklist(
    result: ScanAnomalyResult,
    ids: Sequence[str],
    mass: np.ndarray,
    reference_mass: np.ndarray | None,
    regions: Sequence[str],
    *,
    min_rows: int = 10,
    k_classes: int = 3,
    k_regions: int = 2,
    evidence: Mapping[str, tuple[np.ndarray, np.ndarray | None]] | None = None,
    left_out: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """The scans to look at first, most anomalous first, each with why.

    Every flagged scan, and at least ``min_rows`` scans in all, in order of the scan-level score.
    Why: the ``k_classes`` (family, class) pairs with the smallest per-class p-values over the
    families in the score and, for each, what moved most against the reference: for the shares the
    ``k_regions`` regions (:func:`moved_regions`), for another family its features
    (:func:`moved_features`).

    Args:
        result: the scan-level result of the ``N`` audited scans.
        ids: their ids.
        mass: ``[N, A, B]`` their shares.
        reference_mass: ``[M, A, B]`` the reference shares (``None``: the audited scans).
        regions: the ``B`` region names.
        min_rows: how many scans to list at least (flagged or not).
        k_classes, k_regions: how many (family, class) pairs and regions/features to name per scan.
        evidence: family -> ``(audited [N, A, F], reference [M, A, F] or None)`` raw features, for the words.
        left_out: per audited scan, the evidence left out (``""``: none), copied into its row.

    Returns:
        ``[{"rank", "id", "score", "p_value", "flagged", "evidence_left_out",
        "classes": [{"family", "class", "p", "absent", "regions" | "features": [...]}]}]``.
    """
    ref = mass if reference_mass is None else reference_mass
    scored = np.flatnonzero(np.isfinite(result.score))
    order = scored[np.argsort(-result.score[scored], kind="stable")]
    n_rows = max(int(result.flagged.sum()), min(min_rows, len(order)))
    blocks = ([("shares", result.class_p)] if "shares" in result.families else []) + [
        (f, result.family_p[f]) for f in result.families if f != "shares"]
    rows = []
    for rank, n in enumerate(order[:n_rows], start=1):
        cands = [(float(p[n, a]), b, a) for b, (_, p) in enumerate(blocks) for a in range(len(result.classes)) if np.isfinite(p[n, a])]
        cands.sort(key=lambda t: (t[0], t[1], t[2]))
        classes = []
        for pv, b, a in cands[:k_classes]:
            fam, cls = blocks[b][0], result.classes[a]
            if fam == "shares":
                absent = bool(not np.isfinite(mass[n, a]).any())
                classes.append({"family": fam, "class": cls, "p": pv, "absent": absent,
                                "regions": [] if absent else moved_regions(mass[n, a], ref[:, a], regions, k=k_regions)})
            else:
                aud, ref_f = (evidence or {}).get(fam, (None, None))
                ref_f = aud if ref_f is None else ref_f
                feats = [] if aud is None else moved_features(aud[n, a], ref_f[:, a], fam, cls, k=k_regions)
                classes.append({"family": fam, "class": cls, "p": pv, "absent": False, "features": feats})
        rows.append({"rank": rank, "id": str(ids[n]), "score": float(result.score[n]), "p_value": float(result.p_value[n]),
                     "flagged": bool(result.flagged[n]), "evidence_left_out": "" if left_out is None else str(left_out[n]),
                     "classes": classes})
    return rows


def describe_worklist_row(row: dict[str, object]) -> str:
    """One line of why for a worklist row, in words with the reference named.

    e.g. ``"heart (per-class p 0.02): background share 0.41, reference median 0.22: 19 points higher"``
    (the shares) or ``"heart prediction (per-class p 0.01): heart volume 412 ml, reference median 665 ml:
    38 % lower"`` (another family); the evidence left out for the scan, if any, is named last.
    Regions whose share is unchanged at the printed precision are left out (they are named only when
    nothing else moved).
    """
    parts = []
    for c in row["classes"]:  # type: ignore[union-attr]
        family = c.get("family", "shares")
        if family != "shares":
            head = f"{c['class']} {family} (per-class p {c['p']:.2g})"
            moved = [f for f in c.get("features", []) if not is_unchanged(f["unit"], f["value"], f["reference_median"])]
            parts.append(f"{head}: " + (", ".join(describe_against_reference(f["words"], f["unit"], f["value"], f["reference_median"])
                                                  for f in moved) or "no feature differs visibly from the reference median"))
            continue
        head = f"{c['class']} (per-class p {c['p']:.2g})"
        if c["absent"]:
            parts.append(f"{head}: class not predicted")
            continue
        moved = [r for r in c["regions"] if not is_unchanged(SHARE, r["share"], r["reference_median"])]
        if not moved:
            parts.append(f"{head}: no region's share differs visibly from the reference median")
            continue
        parts.append(f"{head}: " + ", ".join(describe_against_reference(f"{r['region']} share", SHARE, r["share"], r["reference_median"])
                                             for r in moved))
    if row.get("evidence_left_out"):
        parts.append(str(row["evidence_left_out"]))
    return "; ".join(parts)

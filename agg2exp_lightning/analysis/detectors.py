"""The anomaly detectors of the audit: a small protocol and the table of detectors the audit offers.

A detector is fitted on reference rows and scores new rows, **higher = more unusual**; a score above 0
is the detector's own call "outlier" (for scikit-learn's novelty detectors, ``predict == -1``, i.e.
``decision_function < 0``, so the score is ``-decision_function``). The per-class scores, the
cross-fitting, the conformal calibration and the report (:mod:`agg2exp_lightning.analysis.anomaly`,
:mod:`agg2exp_lightning.analysis.cohort`) only ever call :meth:`AnomalyDetector.fit` and
:meth:`AnomalyDetector.score`, so they do not care which detector runs.

- ``isolation_forest`` (default, the paper's): :class:`sklearn.ensemble.IsolationForest` with
  ``random_state`` (123 in the paper) and every other setting at scikit-learn's default.
- ``local_outlier_factor``: :class:`sklearn.neighbors.LocalOutlierFactor` with ``novelty=True`` (so it
  scores rows it was not fitted on), scikit-learn's defaults otherwise (20 neighbours, fewer on small
  reference sets; deterministic, ``random_state`` unused).
- ``robust_distance`` (the default of the scan-level score, :data:`DEFAULT_SCORE_DETECTOR`):
  :class:`RobustDistance`, the mean squared robust z-score of a row's features against the reference
  (median and scaled median absolute deviation per feature): a diagonal Mahalanobis distance that
  outliers in the reference do not inflate. It has no tuning knob and needs no more rows than
  features, which suits reference sets of a few dozen scans (a forest on 19 rows is a noisy density
  estimate; ``benchmarks/detector_power.py`` compares them on simulated features).

A new detector is one :func:`register_detector` call (or one row of :data:`DETECTORS`).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = make_detector("isolation_forest", random_state=123).fit(rng.normal(size=(50, 3)))
    >>> bool(det.score(np.array([[8.0, 8.0, 8.0]]))[0] > det.score(np.zeros((1, 3)))[0])
    True
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from agg2exp_lightning.utils.options import look_up_option

__all__ = ["DEFAULT_DETECTOR", "DEFAULT_SCORE_DETECTOR", "DETECTORS", "AnomalyDetector", "DetectorSpec", "RobustDistance",
           "SklearnNoveltyDetector", "get_detector", "make_detector", "register_detector"]


@runtime_checkable
class AnomalyDetector(Protocol):
    """What the audit needs of a detector: fit on reference rows, score new rows (higher = more unusual,
    above 0 = the detector's outlier call)."""

    def fit(self, x: np.ndarray) -> AnomalyDetector:
        """Fit on ``[M, F]`` reference rows; returns itself."""
        ...

    def score(self, x: np.ndarray) -> np.ndarray:
        """``[N]`` scores of ``[N, F]`` rows: higher = more unusual; above 0 = an outlier."""
        ...


class SklearnNoveltyDetector:
    """A scikit-learn novelty detector (``fit`` / ``decision_function``) as an :class:`AnomalyDetector`:
    score ``-decision_function``, so above 0 exactly where the estimator's ``predict`` says -1."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, x: np.ndarray) -> SklearnNoveltyDetector:
        self.estimator.fit(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return -np.asarray(self.estimator.decision_function(x), dtype=float)


class RobustDistance:
    """Mean squared robust z-score against the reference rows (a diagonal, outlier-resistant Mahalanobis distance).

    ``fit`` keeps, per feature, the median and a scale: ``1.4826 * MAD`` (the standard deviation of a normal
    feature), else the standard deviation where the MAD is 0 (a feature most reference rows share), else 1 (a
    feature constant in the reference: one unit of difference counts as one scale; the evidence families give
    counts in Anscombe units, where 1 is a Poisson count's noise). ``score`` of a row is
    ``mean_f z_f**2 - q / F``, with ``q`` the 97.5 % quantile of a chi-square with ``F`` degrees of freedom: above
    0 where a normal row would be with probability 2.5 % (the detector's own outlier call; the audit's
    calibration does not use it).
    """

    def fit(self, x: np.ndarray) -> RobustDistance:
        from scipy.stats import chi2

        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"Expected at least 2 reference rows of shape [M, F], got {x.shape}")
        self.center = np.median(x, axis=0)
        mad = 1.4826 * np.median(np.abs(x - self.center), axis=0)
        sd = x.std(axis=0)
        # constant means equal values (np.ptp == 0), not sd == 0: the mean of equal floats can be off by an ulp,
        # which gave a standard deviation of ~1e-16 and z-scores of ~1e16
        self.scale = np.where(mad > 0, mad, np.where(np.ptp(x, axis=0) > 0, sd, 1.0))
        self.cut = float(chi2.ppf(0.975, x.shape[1])) / x.shape[1]
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=float) - self.center) / self.scale
        return np.mean(z * z, axis=1) - self.cut


@dataclass(frozen=True)
class DetectorSpec:
    """One row of the detector table.

    Attributes:
        name: the name ``--detector`` takes.
        label: how the report names the fitted detectors (plural), e.g. ``"Isolation Forests"``.
        estimator: the estimator's class name, recorded in ``summary.json`` (``anomaly.method``).
        build: ``build(random_state) -> AnomalyDetector``, a fresh unfitted detector.
    """

    name: str
    label: str
    estimator: str
    build: Callable[[int], AnomalyDetector]


def _isolation_forest(random_state: int) -> AnomalyDetector:
    from sklearn.ensemble import IsolationForest

    return SklearnNoveltyDetector(IsolationForest(random_state=random_state))


def _local_outlier_factor(random_state: int) -> AnomalyDetector:
    import warnings

    from sklearn.neighbors import LocalOutlierFactor

    class _LOF(SklearnNoveltyDetector):
        def fit(self, x: np.ndarray) -> _LOF:
            with warnings.catch_warnings():  # fewer rows than 20 neighbours: scikit-learn uses all of them, as documented here
                warnings.filterwarnings("ignore", message="n_neighbors .* is greater than", category=UserWarning)
                self.estimator.fit(x)
            return self

    return _LOF(LocalOutlierFactor(novelty=True))


def _robust_distance(random_state: int) -> AnomalyDetector:
    return RobustDistance()


#: The detectors ``--detector`` and ``--score-detector`` offer, by name.
DETECTORS: dict[str, DetectorSpec] = {
    "isolation_forest": DetectorSpec("isolation_forest", "Isolation Forests", "IsolationForest", _isolation_forest),
    "local_outlier_factor": DetectorSpec("local_outlier_factor", "Local Outlier Factor models", "LocalOutlierFactor",
                                         _local_outlier_factor),
    "robust_distance": DetectorSpec("robust_distance", "robust distances", "RobustDistance", _robust_distance),
}
#: The paper's detector (the per-class outlier calls).
DEFAULT_DETECTOR = "isolation_forest"
#: The detector of the calibrated scan-level score.
DEFAULT_SCORE_DETECTOR = "robust_distance"


def get_detector(name: str, argument: str = "detector") -> DetectorSpec:
    """The table row of a detector (``ValueError`` naming ``argument``, the valid names and a "did you mean")."""
    return DETECTORS[look_up_option(argument, name, tuple(DETECTORS))]


def make_detector(name: str, random_state: int) -> AnomalyDetector:
    """A fresh detector ``name`` seeded with ``random_state``."""
    return get_detector(name).build(random_state)


def register_detector(spec: DetectorSpec, *, replace: bool = False) -> None:
    """Offer another detector (``--detector spec.name``); ``replace`` allows replacing a row of that name.

    Raises:
        ValueError: the name is taken (without ``replace``).
    """
    if spec.name in DETECTORS and not replace:
        raise ValueError(f"detector {spec.name!r} is registered already (pass replace=True to replace it)")
    DETECTORS[spec.name] = spec

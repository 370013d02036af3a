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

__all__ = ["DEFAULT_DETECTOR", "DETECTORS", "AnomalyDetector", "DetectorSpec", "SklearnNoveltyDetector", "get_detector",
           "make_detector", "register_detector"]


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


#: The detectors ``--detector`` offers, by name (the first is the default).
DETECTORS: dict[str, DetectorSpec] = {
    "isolation_forest": DetectorSpec("isolation_forest", "Isolation Forests", "IsolationForest", _isolation_forest),
    "local_outlier_factor": DetectorSpec("local_outlier_factor", "Local Outlier Factor models", "LocalOutlierFactor",
                                         _local_outlier_factor),
}
#: The paper's detector.
DEFAULT_DETECTOR = "isolation_forest"


def get_detector(name: str) -> DetectorSpec:
    """The table row of a detector (``ValueError`` naming the valid ones, with a "did you mean")."""
    return DETECTORS[look_up_option("detector", name, tuple(DETECTORS))]


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

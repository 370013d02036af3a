"""The whole cohort analysis of one table of aggregated explanations, and its JSON summary.

``summary.json`` schema (:meth:`CohortAnalysis.summary`; NaN is written as ``null``)::

    {
      "schema_version": 1,
      "n_scans": int,
      "classes": [str], "regions": [str],          # our label names, label-id order
      "anomaly": {
        "method": "IsolationForest" | "LocalOutlierFactor", "random_state": int,   # the estimator's class
        "detector": str, "detector_label": str,     # analysis.detectors: name (--detector) and the report's plural
        "score_detector": str, "score_tail": str,   # the scan-level score's detector and tail (--score-detector, --score-tail)
        "score": "-decision_function (higher = more anomalous)",
        "outlier": "predict == -1",
        "fitted_on": "audited scans" | "reference scans",
        "n_reference": {class: int},             # scans each forest was fitted on
        "n_outlier_scans": int                   # outlier for at least one class
      },
      "per_class": {class: {
        "rho": float|null, "p": float|null, "q": float|null, "n": int,   # Spearman(score, Dice), BH q
        "n_outliers": int, "own_share": float, "context_reliance": float, "background_share": float
      }},
      "global_roi_importance": {class: {region: float}},   # mean share e_{region->class}
      "strongest_dependencies": [{"region": str, "class": str, "share": float}],  # off-diagonal, no background
      "extreme_cases": {class: {"most_anomalous": [{"id": str, "score": float}],
                                "least_anomalous": [{"id": str, "score": float}]}},
      "bias_tests": [{"group": "any_class"|class, "column": str, "kind": str, "test": str,
                      "n_outliers": int, "n_inliers": int, "statistic": float, "p": float,
                      "q": float, "effect": str, "effect_size": float, "detail": str}],
      "bias_skipped": [{"group": str, "column": str, "reason": str}],
      "protocol": {"name": str, "label": str, "overridden": [str], "settings": {...}},   # agg2exp_lightning.protocols
      "merged_regions": {region: [member regions]},
      "dependency_graph": {"rule": str, "cumulative_share": float, "top_k": int,
                           "edges": [{"region", "class", "share", "cumulative_share", "width", "self"}]},
      "clustering": null | {"rule", "method", "labels", "order", "linkage", "cophenetic_correlation"},
      "mean_anomaly_vs_mean_dice": {"rho": float|null, "p": float|null, "n": int},
      "scan_anomaly": {"method": str, "notes": [str],     # calibrated scan-level score (analysis.anomaly)
                       "reference": str, "n_reference": int, "n_folds": int, "contamination": float,
                       "threshold": float|null, "flag": str, "expected_false_positive_rate": float,
                       "any_class_outlier_rate_held_out": float|null, "n_flagged": int,
                       "evidence": [str]},                 # families in the score; absent when skipped
      "worklist": [{"rank": int, "id": str, "score": float, "p_value": float, "flagged": bool, "why": str,
                    "evidence_left_out": str,              # families left out for this scan, in words ("" none)
                    "classes": [{"family": str, "class": str, "p": float, "absent": bool,
                                 "regions": [{"region", "share", "reference_median", "direction", "tail"}],   # shares
                                 "features": [{"feature", "words", "unit", "value", "reference_median", "tail"}]}]}],  # other families
      "score_tests": [{"group": "scan_score", "column": str, "kind": str, "test": str, "n": int,
                       "n_groups": int|null, "statistic": float, "p": float, "q": float, "effect": str,
                       "effect_size": float, "ci_low": float|null, "ci_high": float|null, "detail": str}],
      "score_tests_skipped": [{"group": str, "column": str, "reason": str}]
    }

Two Benjamini-Hochberg families: ``score_tests`` (the scan-level score against every metadata column,
numeric columns also binned: the primary bias analysis) and ``bias_tests`` (the paper's per-class
outlier-proportion tests, one test per class and column: exploratory). Pooling them into one family
made the primary tests pay for the exploratory ones: in the power benchmark's cohorts (17 classes, 7
metadata columns) a score test needed p below 0.05 x rank / 134 instead of 0.05 x rank / 8
(``docs/auditing.md``).

Bias-test rows also hold ``t_statistic``/``t_p`` (Student's t-test beside Mann-Whitney, numeric
columns) and ``proportions`` (categorical columns), as the paper reported them.

``rho``/``p``/``q`` are ``null`` when the table has no Dice for the class.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from agg2exp_lightning.analysis.anomaly import (
    DEFAULT_FOLDS,
    DEFAULT_SCORE_TAIL,
    MIN_REFERENCE_SCANS,
    AnomalyResult,
    ScanAnomalyResult,
    anomaly_worklist,
    class_anomaly_scores,
    describe_worklist_row,
    extreme_cases,
    scan_anomaly_scores,
    scan_score_description,
)
from agg2exp_lightning.analysis.bias import BiasResult, bias_tests, score_tests
from agg2exp_lightning.analysis.correlation import anomaly_dice_correlation, mean_score_dice_correlation
from agg2exp_lightning.analysis.detectors import DEFAULT_DETECTOR, DEFAULT_SCORE_DETECTOR, get_detector
from agg2exp_lightning.analysis.graph import ClassClustering, class_clustering, dependency_edges
from agg2exp_lightning.analysis.importance import context_reliance, global_roi_importance, strongest_dependencies
from agg2exp_lightning.analysis.regions import apply_empty_regions, merge_table_regions, resolve_merges
from agg2exp_lightning.analysis.tables import PUBLISHED_SPELLING, ExplanationTable, to_published_frame
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.protocols import Protocol, resolve_protocol

if TYPE_CHECKING:
    from agg2exp_lightning.audit_settings import AuditSettings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Name of the union-over-classes group in the bias tests.
ANY_CLASS = "any_class"


@dataclass(frozen=True)
class CohortAnalysis:
    """Everything the audit reports about a cohort (see :func:`analyze_cohort`)."""

    table: ExplanationTable
    importance: np.ndarray
    reliance: pd.DataFrame
    dependencies: pd.DataFrame
    anomaly: AnomalyResult
    correlation: pd.DataFrame
    bias: BiasResult
    extremes: pd.DataFrame
    fitted_on_reference: bool
    random_state: int
    protocol: Protocol = field(default_factory=resolve_protocol)
    graph: pd.DataFrame = field(default_factory=pd.DataFrame)
    clustering: ClassClustering | None = None
    mean_correlation: dict[str, Any] = field(default_factory=dict)
    merges: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scan: ScanAnomalyResult | None = None
    score_bias: BiasResult | None = None
    worklist: list[dict[str, Any]] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    detector: str = DEFAULT_DETECTOR
    score_detector: str = DEFAULT_SCORE_DETECTOR
    score_tail: str = DEFAULT_SCORE_TAIL

    def per_scan_frame(self) -> pd.DataFrame:
        """The audited table in the published column format plus, per class ``a`` (published
        spelling), ``{a}_anomaly_score`` and ``{a}_outlier``, and ``any_class_outlier``."""
        extra: dict[str, np.ndarray] = {}
        for i, a in enumerate(self.table.classes):
            spelled = PUBLISHED_SPELLING.get(a, a)
            extra[f"{spelled}_anomaly_score"] = self.anomaly.scores[:, i]
            extra[f"{spelled}_outlier"] = self.anomaly.outliers[:, i]
        extra[f"{ANY_CLASS}_outlier"] = self.anomaly.any_outlier
        if self.scan is not None:  # the calibrated scan-level score (analysis.anomaly.scan_anomaly_scores)
            for i, a in enumerate(self.table.classes):
                extra[f"{PUBLISHED_SPELLING.get(a, a)}_anomaly_p"] = self.scan.class_p[:, i]
            for fam, fp in self.scan.family_p.items():
                for i, a in enumerate(self.table.classes):
                    extra[f"{PUBLISHED_SPELLING.get(a, a)}_{fam}_anomaly_p"] = fp[:, i]
            if self.scan.family_p:
                from agg2exp_lightning.analysis.evidence import missing_evidence

                fams = list(self.scan.family_p)
                extra["evidence_left_out"] = np.array(missing_evidence({f: self.table.evidence[f] for f in fams}, self.table.classes, fams),
                                                      dtype=object)
            extra["scan_anomaly_score"] = self.scan.score
            extra["scan_anomaly_p"] = self.scan.p_value
            extra["scan_flagged"] = self.scan.flagged
            order = pd.Series(self.scan.score).rank(ascending=False, method="first")
            extra["scan_rank"] = order.astype("Int64").to_numpy()
        return to_published_frame(self.table, extra)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready summary; schema in the module docstring."""
        classes, regions = list(self.table.classes), list(self.table.regions)
        per_class = {}
        for i, a in enumerate(classes):
            corr = self.correlation.loc[a]
            rel = self.reliance.loc[a] if a in self.reliance.index else None
            per_class[a] = {
                "rho": _num(corr["rho"]), "p": _num(corr["p"]), "q": _num(corr["q"]), "n": int(corr["n"]),
                "n_outliers": int(self.anomaly.outliers[:, i].sum()),
                "own_share": _num(rel["own_share"]) if rel is not None else None,
                "context_reliance": _num(rel["context_reliance"]) if rel is not None else None,
                "background_share": _num(rel["background_share"]) if rel is not None else None,
            }
        extremes: dict[str, dict[str, list[dict[str, Any]]]] = {a: {"most_anomalous": [], "least_anomalous": []} for a in classes}
        for row in self.extremes.itertuples(index=False):
            extremes[row[0]][row.end].append({"id": row.id, "score": _num(row.score)})
        return {
            "schema_version": SCHEMA_VERSION,
            "n_scans": len(self.table),
            "classes": classes,
            "regions": regions,
            "anomaly": {
                "method": get_detector(self.detector).estimator,
                "detector": self.detector,
                "detector_label": get_detector(self.detector).label,
                "score_detector": self.score_detector,
                "score_tail": self.score_tail,
                "random_state": self.random_state,
                "score": "-decision_function (higher = more anomalous)",
                "outlier": "predict == -1",
                "fitted_on": "reference scans" if self.fitted_on_reference else "audited scans",
                "n_reference": {a: int(n) for a, n in zip(classes, self.anomaly.n_reference)},
                "n_outlier_scans": int(self.anomaly.any_outlier.sum()),
            },
            "per_class": per_class,
            "global_roi_importance": {a: {b: _num(self.importance[i, j]) for j, b in enumerate(regions)} for i, a in enumerate(classes)},
            "strongest_dependencies": [{"region": r, "class": c, "share": _num(s)} for r, c, s in self.dependencies.itertuples(index=False)],
            "extreme_cases": extremes,
            "bias_tests": [{k: _num(v) if isinstance(v, float) else v for k, v in row.items()} for row in self.bias.tests.to_dict("records")],
            "bias_skipped": self.bias.skipped.to_dict("records"),
            **self._paper_summary(),
            **self._scan_summary(),
        }

    def _scan_summary(self) -> dict[str, Any]:
        """The calibrated scan-level score, the worklist and the score's rank tests."""
        scan, tests = self.scan, self.score_bias
        block: dict[str, Any] = {"method": scan_score_description(self.score_detector, self.score_tail), "notes": list(self.notes)}
        if scan is not None:
            block.update({
                "reference": "audited scans (their own reference)" if scan.self_reference else "reference scans",
                "n_reference": scan.n_reference, "n_folds": DEFAULT_FOLDS, "contamination": scan.contamination,
                "evidence": list(scan.families),
                "threshold": _num(scan.threshold), "flag": "p_value <= contamination (equivalently score > threshold)",
                "expected_false_positive_rate": scan.expected_fpr,
                "any_class_outlier_rate_held_out": _num(scan.heldout_class_fpr),
                "n_flagged": int(scan.flagged.sum()),
            })
        return {
            "scan_anomaly": block,
            "worklist": [{**row, "why": describe_worklist_row(row)} for row in self.worklist],
            "score_tests": [] if tests is None else [{k: _num(v) if isinstance(v, float) else v for k, v in row.items()}
                                                      for row in tests.tests.to_dict("records")],
            "score_tests_skipped": [] if tests is None else tests.skipped.to_dict("records"),
        }

    def _paper_summary(self) -> dict[str, Any]:
        """The summary's protocol and the paper's analyses (graph, clustering, scan-level Spearman)."""
        p = self.protocol
        mean = self.mean_correlation
        return {
            "protocol": p.as_dict(),
            "merged_regions": {k: list(v) for k, v in self.merges.items()},
            "dependency_graph": {
                "rule": p.graph_rule, "cumulative_share": p.graph_cumulative_share, "top_k": p.graph_top_k,
                "edges": [{k: (_num(v) if isinstance(v, float) else (bool(v) if k == "self" else v)) for k, v in row.items()}
                          for row in self.graph.to_dict("records")],
            },
            "clustering": None if self.clustering is None else self.clustering.as_dict(),
            "mean_anomaly_vs_mean_dice": {"rho": _num(mean.get("rho", math.nan)), "p": _num(mean.get("p", math.nan)),
                                          "n": int(mean.get("n", 0))},
        }


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


def analyze_cohort(
    table: ExplanationTable,
    reference: ExplanationTable | None = None,
    settings: AuditSettings | None = None,
    *,
    reference_notes: Sequence[str] = (),
    **fields: Any,
) -> CohortAnalysis:
    """Run the cohort analysis: RoI importance, anomalies, correlation with Dice, bias tests.

    Args:
        table: the audited scans.
        reference: scans to fit the detectors on (e.g. the training split); ``None``
            fits on ``table``. Must have the same classes and regions.
        settings: the audit's :class:`~agg2exp_lightning.audit_settings.AuditSettings` (already checked);
            the analysis reads the fields below from it.
        reference_notes: what the caller knows about the reference set that limits the flag's bound
            (e.g. it is the training split): logged and written first among ``scan_anomaly.notes``.
        **fields: fields of :class:`~agg2exp_lightning.audit_settings.AuditSettings` to set on top of
            ``settings`` (or of the defaults), checked there:
        random_state: seed of the detectors.
        n_dependencies: how many region -> class dependencies to report.
        n_extremes: how many most/least anomalous scans to report per class.
        seed: seed of the permutation bias tests.
        protocol: ``"corrected"`` (default) or ``"paper"`` (:mod:`agg2exp_lightning.protocols`): the
            share of a region absent from a scan, the dependency-graph rule and the clustering rule.
        merges: ``{new region: member regions}`` (or ``--merge`` specs) joined before the analysis (e.g. the five lobes into
            ``lung``; see :func:`~agg2exp_lightning.analysis.regions.merge_table_regions`).
        contamination: share of clean scans the scan-level flag may raise, in ``(0, 0.5]``
            (:func:`~agg2exp_lightning.analysis.anomaly.scan_anomaly_scores`; the per-class
            outliers stay the paper's ``predict == -1``).
        n_bootstrap: bootstrap resamples of the score tests' effect-size CIs (default
            :data:`~agg2exp_lightning.analysis.bias.N_BOOTSTRAP`).
        evidence: the evidence families of the scan-level score (``"shares,prediction,attribution,image"`` or
            a list; :mod:`~agg2exp_lightning.analysis.evidence`); default every family, the paper
            protocol the shares alone. A family the table does not hold for any scan (tables of shares)
            is left out with a note.
        detector: the per-class anomaly detector, a name of
            :data:`~agg2exp_lightning.analysis.detectors.DETECTORS` (default: the paper's Isolation Forest).
        score_detector: the detector of the scan-level score's families and classes (default the robust
            distance, :class:`~agg2exp_lightning.analysis.detectors.RobustDistance`).
        score_tail: how a per-class score beyond every reference score is read (``"exponential"`` or
            ``"conformal"``; :func:`~agg2exp_lightning.analysis.anomaly.tail_p`).

    Returns:
        A :class:`CohortAnalysis`.

    Raises:
        DataError: the reference table has other classes or regions than ``table``.
        ValueError: an unknown protocol, or a merge naming a region the table does not have.
    """
    from agg2exp_lightning.audit_settings import AuditSettings

    settings = AuditSettings.build(settings, **fields)
    protocol, detector, seed = settings.protocol, settings.detector, settings.seed
    merges = ({str(k): tuple(v) for k, v in settings.merges.items()} if isinstance(settings.merges, Mapping)
              else resolve_merges(settings.merges, table.regions))
    table = _prepare(table, protocol, merges)
    reference = None if reference is None else _prepare(reference, protocol, merges)
    if reference is not None and (reference.classes != table.classes or reference.regions != table.regions):
        raise DataError(
            f"reference table must have the audited classes and regions; got classes {list(reference.classes)} "
            f"and regions {list(reference.regions)}, expected {list(table.classes)} and {list(table.regions)}"
        )
    classes, regions = table.classes, table.regions
    importance = global_roi_importance(table.mass)
    own_classes = [a for a in classes if a in regions]
    own_idx = [classes.index(a) for a in own_classes]
    reliance = context_reliance(table.mass[:, own_idx, :], own_classes, regions)
    anomaly = class_anomaly_scores(table.mass, classes, None if reference is None else reference.mass,
                                   random_state=settings.random_state, detector=detector)
    dice = table.dice if table.dice is not None else np.full(anomaly.scores.shape, np.nan)
    correlation = anomaly_dice_correlation(anomaly.scores, dice, classes)
    groups: dict[str, pd.Series] = {ANY_CLASS: pd.Series(anomaly.any_outlier)}
    for i, a in enumerate(classes):
        flags = pd.Series(anomaly.outliers[:, i], dtype="boolean")
        flags[np.isnan(anomaly.scores[:, i])] = pd.NA
        groups[a] = flags
    bias = bias_tests(table.metadata, groups, seed=seed)
    scan, worklist, notes = _scan_level(table, reference, settings.contamination, settings.random_state, detector, reference_notes,
                                        settings.evidence, settings.score_detector, settings.score_tail)
    score_bias = None
    if scan is not None:
        from agg2exp_lightning.analysis.bias import N_BOOTSTRAP

        score_bias = score_tests(table.metadata, scan.score, n_bootstrap=N_BOOTSTRAP if settings.n_bootstrap is None else settings.n_bootstrap,
                                 seed=seed)
        for row in score_bias.skipped.itertuples(index=False):
            log.warning("metadata column %r not tested against the scan-level score: %s", row.column, row.reason)
    graph = dependency_edges(importance, classes, regions, rule=protocol.graph_rule,
                             cumulative_share=protocol.graph_cumulative_share, top_k=protocol.graph_top_k)
    return CohortAnalysis(
        table=table,
        importance=importance,
        reliance=reliance,
        dependencies=strongest_dependencies(importance, classes, regions, k=settings.n_dependencies),
        anomaly=anomaly,
        correlation=correlation,
        bias=bias,
        extremes=extreme_cases(anomaly.scores, table.ids, classes, k=settings.n_extremes),
        fitted_on_reference=reference is not None,
        random_state=settings.random_state,
        protocol=protocol,
        graph=graph,
        clustering=class_clustering(importance, classes, regions, rule=protocol.clustering),
        mean_correlation=mean_score_dice_correlation(anomaly.scores, dice),
        merges=merges,
        scan=scan,
        score_bias=score_bias,
        worklist=worklist,
        notes=tuple(notes),
        detector=detector,
        score_detector=settings.score_detector,
        score_tail=settings.score_tail,
    )


def _scan_level(table: ExplanationTable, reference: ExplanationTable | None, contamination: float,
                random_state: int, detector: str = DEFAULT_DETECTOR, reference_notes: Sequence[str] = (),
                evidence: Sequence[str] = ("shares",), score_detector: str = DEFAULT_SCORE_DETECTOR,
                score_tail: str = DEFAULT_SCORE_TAIL) -> tuple[ScanAnomalyResult | None, list[dict[str, Any]], list[str]]:
    """The calibrated scan-level score and worklist, falling back to the audited scans as their own
    reference when the reference set is too small; notes say what was done instead or skipped."""
    ref_mass = None if reference is None else reference.mass
    notes: list[str] = list(reference_notes) if ref_mass is not None and len(ref_mass) >= MIN_REFERENCE_SCANS else []
    if ref_mass is not None and len(ref_mass) < MIN_REFERENCE_SCANS:
        notes.append(f"the reference set has {len(ref_mass)} scans, fewer than the {MIN_REFERENCE_SCANS} the cross-fitted "
                     "forests of the scan-level score need; the audited scans are their own reference instead")
        ref_mass = None
    if ref_mass is None and len(table) < MIN_REFERENCE_SCANS:
        notes.append(f"scan-level score skipped: {len(table)} audited scans and no usable reference set; it needs at least "
                     f"{MIN_REFERENCE_SCANS} reference (or audited) scans")
        for note in notes:
            log.warning("%s", note)
        return None, [], notes
    from agg2exp_lightning.analysis.evidence import forest_features, missing_evidence

    ref_table = None if ref_mass is None else reference
    families: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    unavailable = []
    for fam in evidence:
        if fam == "shares":
            continue
        aud = table.evidence.get(fam)
        ref = None if ref_table is None else ref_table.evidence.get(fam)
        if aud is None or (ref_table is not None and ref is None) or not np.isfinite(aud).all(axis=2).any():
            unavailable.append(fam)
            continue
        families[fam] = (aud, ref)
    if unavailable:
        notes.append(f"{' and '.join(unavailable)} evidence not available for any audited scan (a table of shares holds none): "
                     "left out of the scan-level score")
    shares = "shares" in evidence
    if not shares and not families:
        notes.append("no evidence family left for the scan-level score; the shares are used")
        shares = True
    scan = scan_anomaly_scores(table.mass, table.classes, ref_mass, contamination=contamination, random_state=random_state,
                               families={f: (forest_features(a, f), None if r is None else forest_features(r, f)) for f, (a, r) in families.items()},
                               shares=shares, detector=detector, score_detector=score_detector, score_tail=score_tail)
    left_out = missing_evidence({f: a for f, (a, _) in families.items()}, table.classes, list(families)) if families else None
    if scan.expected_fpr == 0:
        notes.append(f"{scan.n_reference} reference scans cannot calibrate a false-positive rate of {contamination:g}: no scan "
                     "can be flagged; give more reference scans or a larger contamination")
    for note in notes:
        log.warning("%s", note)
    return scan, anomaly_worklist(scan, table.ids, table.mass, ref_mass, table.regions, evidence=families, left_out=left_out), notes


def _prepare(table: ExplanationTable, protocol: Protocol, merges: Mapping[str, Sequence[str]]) -> ExplanationTable:
    """The table with regions merged and the protocol's share for absent regions."""
    if merges:
        table = merge_table_regions(table, merges)
    return dataclasses.replace(table, mass=apply_empty_regions(table.mass, protocol.empty_regions))

"""Cohort analysis of aggregated explanations: pure functions over tables of RoI shares."""
from __future__ import annotations

from agg2exp_lightning.analysis.anomaly import (
    AnomalyResult,
    ScanAnomalyResult,
    anomaly_worklist,
    class_anomaly_scores,
    extreme_cases,
    scan_anomaly_scores,
)
from agg2exp_lightning.analysis.bias import BiasResult, bias_tests, classify_metadata, joint_q, score_tests
from agg2exp_lightning.analysis.cohort import CohortAnalysis, analyze_cohort
from agg2exp_lightning.analysis.correlation import anomaly_dice_correlation, benjamini_hochberg
from agg2exp_lightning.analysis.importance import (
    context_reliance,
    global_roi_importance,
    own_region_share,
    strongest_dependencies,
)
from agg2exp_lightning.analysis.report import render_report
from agg2exp_lightning.analysis.tables import (
    ExplanationTable,
    parse_explanation_table,
    read_explanation_table,
    to_published_frame,
)

__all__ = [
    "AnomalyResult",
    "BiasResult",
    "CohortAnalysis",
    "ExplanationTable",
    "ScanAnomalyResult",
    "analyze_cohort",
    "anomaly_dice_correlation",
    "anomaly_worklist",
    "benjamini_hochberg",
    "bias_tests",
    "class_anomaly_scores",
    "classify_metadata",
    "context_reliance",
    "extreme_cases",
    "global_roi_importance",
    "joint_q",
    "own_region_share",
    "parse_explanation_table",
    "read_explanation_table",
    "render_report",
    "scan_anomaly_scores",
    "score_tests",
    "strongest_dependencies",
    "to_published_frame",
]

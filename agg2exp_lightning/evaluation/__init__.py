"""Evaluating attribution methods: faithfulness, sensitivity, complexity and efficiency.

The metrics are pure functions of a model, a scan and attribution maps ``[T, *S]`` (one per target
class); :func:`compare_methods` runs them for several methods over a cohort and writes the table.
"""
from __future__ import annotations

from agg2exp_lightning.evaluation._checks import UndefinedScoreWarning
from agg2exp_lightning.evaluation.compare import METHODS, ComparisonSettings, compare_methods, make_method_attributor
from agg2exp_lightning.evaluation.complexity import effective_complexity
from agg2exp_lightning.evaluation.efficiency import EfficiencyResult, explanation_efficiency, timed
from agg2exp_lightning.evaluation.faithfulness import (
    FaithfulnessResult,
    attribution_sums,
    faithfulness_correlation,
    output_drops,
    pearson_rows,
    random_subsets,
)
from agg2exp_lightning.evaluation.report import markdown_table, plot_comparison, summarise, write_report
from agg2exp_lightning.evaluation.sensitivity import SensitivityResult, relative_distance, sensitivity, uniform_noise

__all__ = [
    "METHODS",
    "ComparisonSettings",
    "EfficiencyResult",
    "FaithfulnessResult",
    "SensitivityResult",
    "UndefinedScoreWarning",
    "attribution_sums",
    "compare_methods",
    "make_method_attributor",
    "effective_complexity",
    "explanation_efficiency",
    "faithfulness_correlation",
    "markdown_table",
    "output_drops",
    "pearson_rows",
    "plot_comparison",
    "random_subsets",
    "relative_distance",
    "sensitivity",
    "summarise",
    "timed",
    "uniform_noise",
    "write_report",
]

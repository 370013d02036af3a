"""Evaluating attribution methods: faithfulness, sensitivity, complexity and efficiency.

The metrics are pure functions of a model, a scan and attribution maps ``[T, *S]`` (one per target
class); :func:`compare_methods` runs them for several methods over a cohort and writes the table.
"""
from __future__ import annotations

from agg2exp_lightning.evaluation._checks import UndefinedScoreWarning
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
from agg2exp_lightning.evaluation.sensitivity import SensitivityResult, relative_distance, sensitivity, uniform_noise

__all__ = [
    "EfficiencyResult",
    "FaithfulnessResult",
    "SensitivityResult",
    "UndefinedScoreWarning",
    "attribution_sums",
    "effective_complexity",
    "explanation_efficiency",
    "faithfulness_correlation",
    "output_drops",
    "pearson_rows",
    "random_subsets",
    "relative_distance",
    "sensitivity",
    "timed",
    "uniform_noise",
]

"""Explanation engine: the Agg2Exp proxy, attribution methods sharing passes across classes, and
aggregation into region-of-interest importance.

Example:
    >>> import torch
    >>> from agg2exp_lightning.explain import explain
    >>> result = explain(torch.nn.Conv3d(1, 3, 3, padding=1), torch.rand(1, 8, 8, 8), method="ig", n_steps=4)
    >>> result.roi.shape
    torch.Size([3, 3])
"""
from __future__ import annotations

from agg2exp_lightning.errors import NonFiniteError
from agg2exp_lightning.explain._gradients import IG_RULES, integration_points
from agg2exp_lightning.explain._kernelshap import (
    cube_feature_mask,
    sample_coalitions,
    semantic_feature_mask,
    shapley_kernel_weight,
    solve_shapley,
)
from agg2exp_lightning.explain._sliding_window import WindowPlan, blended_logits, window_plan
from agg2exp_lightning.explain._validation import METHODS, resolve_method_name
from agg2exp_lightning.explain.aggregation import mean_roi_over_scans, merge_regions, region_masses, roi_importance
from agg2exp_lightning.explain.baselines import BASELINES, gaussian_blur, make_baseline
from agg2exp_lightning.explain.engine import METHOD_OPTIONS, ExplanationResult, explain
from agg2exp_lightning.explain.model_state import explanation_mode
from agg2exp_lightning.explain.proxy import prediction_labels, proxy_output

__all__ = [
    "BASELINES",
    "IG_RULES",
    "METHODS",
    "METHOD_OPTIONS",
    "NonFiniteError",
    "ExplanationResult",
    "WindowPlan",
    "blended_logits",
    "cube_feature_mask",
    "explain",
    "explanation_mode",
    "gaussian_blur",
    "mean_roi_over_scans",
    "integration_points",
    "make_baseline",
    "merge_regions",
    "prediction_labels",
    "proxy_output",
    "region_masses",
    "resolve_method_name",
    "roi_importance",
    "sample_coalitions",
    "semantic_feature_mask",
    "shapley_kernel_weight",
    "solve_shapley",
    "window_plan",
]

"""Explanation engine: the Agg2Exp proxy, attribution methods sharing passes across classes, and
aggregation into region-of-interest importance.

What a user calls is exported here; the solvers (integration rules, coalition sampling, the Shapley
regression, sliding-window plans) stay in their private modules (tests import them from there).
A new attribution method is one module with its function and one :func:`register_method` call
(:mod:`agg2exp_lightning.explain.methods`).

Example:
    >>> import torch
    >>> from agg2exp_lightning.explain import explain
    >>> result = explain(torch.nn.Conv3d(1, 3, 3, padding=1), torch.rand(1, 8, 8, 8), method="ig", n_steps=4)
    >>> result.roi.shape
    torch.Size([3, 3])
"""
from __future__ import annotations

from agg2exp_lightning.errors import NonFiniteError
from agg2exp_lightning.explain.aggregation import mean_roi_over_scans, merge_regions, region_masses, roi_importance
from agg2exp_lightning.explain.baselines import BASELINES, make_baseline
from agg2exp_lightning.explain.engine import ExplanationResult, explain
from agg2exp_lightning.explain.memory import ExplanationTooLarge, explain_memory_estimate
from agg2exp_lightning.explain.methods import (
    METHODS,
    AttributionMethod,
    available_methods,
    get_method,
    register_method,
    resolve_method_name,
    unregister_method,
)
from agg2exp_lightning.explain.model_state import explanation_mode
from agg2exp_lightning.explain.proxy import prediction_labels, proxy_output

__all__ = [
    "BASELINES",
    "METHODS",
    "AttributionMethod",
    "ExplanationResult",
    "ExplanationTooLarge",
    "NonFiniteError",
    "available_methods",
    "explain",
    "explain_memory_estimate",
    "explanation_mode",
    "get_method",
    "make_baseline",
    "mean_roi_over_scans",
    "merge_regions",
    "prediction_labels",
    "proxy_output",
    "region_masses",
    "register_method",
    "resolve_method_name",
    "roi_importance",
    "unregister_method",
]

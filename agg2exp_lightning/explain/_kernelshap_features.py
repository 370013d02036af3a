"""The paper's two KernelSHAP methods: the estimator of :mod:`._kernelshap` over cubes or predicted regions (private).

Each function builds its feature groups and hands every other option to
:func:`~agg2exp_lightning.explain._kernelshap.kernelshap` (the method table reads those options from
its signature).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from agg2exp_lightning.explain import _kernelshap
from agg2exp_lightning.explain._predictor import Predictor


def kernelshap_cubes(
    predictor: Predictor, image: Tensor, *, proxy_at_image: Tensor, n_samples: int = 1000, cubes_per_axis: int = 8, **options: Any
) -> tuple[Tensor, dict[str, Any]]:
    """KernelSHAP over a grid of ``cubes_per_axis`` cubes per axis (the paper: 8, 1000 coalitions)."""
    feature_mask, m = _kernelshap.cube_feature_mask(tuple(image.shape[2:]), cubes_per_axis, device=image.device)
    return _kernelshap.kernelshap(predictor, image, feature_mask, m, proxy_at_image=proxy_at_image, n_samples=n_samples, **options)


def kernelshap_semantic(
    predictor: Predictor, image: Tensor, *, proxy_at_image: Tensor, labels: Tensor, n_samples: int = 200, **options: Any
) -> tuple[Tensor, dict[str, Any]]:
    """KernelSHAP over the predicted regions, one feature per label present (the paper: 200 coalitions)."""
    feature_mask, present = _kernelshap.semantic_feature_mask(labels)
    attr, diag = _kernelshap.kernelshap(predictor, image, feature_mask, len(present), proxy_at_image=proxy_at_image,
                                        n_samples=n_samples, **options)
    diag["kernelshap_feature_labels"] = present
    return attr, diag

"""The paper's two KernelSHAP methods: the estimator of :mod:`._kernelshap` over cubes or predicted regions (private).

Each function builds its feature groups and hands every other option to
:func:`~agg2exp_lightning.explain._kernelshap.kernelshap` (the method table reads those options from
its signature).
"""
from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from agg2exp_lightning.explain import _kernelshap
from agg2exp_lightning.explain._predictor import Predictor


def kernelshap_cubes(
    predictor: Predictor, image: Tensor, *, proxy_at_image: Tensor, n_samples: int = 1000, cubes_per_axis: int = 8,
    cube_mask: Literal["balanced", "modulo"] = "balanced", **options: Any
) -> tuple[Tensor, dict[str, Any]]:
    """KernelSHAP over cubes (the paper: 1000 coalitions): ``cube_mask="balanced"``, a grid of
    ``cubes_per_axis`` contiguous cubes per axis; ``"modulo"``, the authors' cubes with
    ``cubes_per_axis ** 3`` components (8: their 512) and ids modulo that number."""
    feature_mask, m = _kernelshap.cube_mask(tuple(image.shape[2:]), cubes_per_axis, cube_mask, device=image.device)
    return _kernelshap.kernelshap(predictor, image, feature_mask, m, proxy_at_image=proxy_at_image, n_samples=n_samples, **options)


def kernelshap_semantic(
    predictor: Predictor, image: Tensor, *, proxy_at_image: Tensor, labels: Tensor, n_samples: int = 200,
    features: Literal["present", "label_range"] = "present", **options: Any
) -> tuple[Tensor, dict[str, Any]]:
    """KernelSHAP over the predicted regions (the paper: 200 coalitions): one feature per label present
    (``features="present"``) or per label id from the lowest to the highest predicted one (``"label_range"``,
    as the authors' Captum run numbered them: absent labels are features)."""
    feature_mask, present = _kernelshap.semantic_feature_mask(labels, features)
    attr, diag = _kernelshap.kernelshap(predictor, image, feature_mask, len(present), proxy_at_image=proxy_at_image,
                                        n_samples=n_samples, **options)
    diag["kernelshap_feature_labels"] = present
    return attr, diag

"""Eager argument checks for the explanation engine, with messages naming the argument (private)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from agg2exp_lightning.errors import NonFiniteError
from agg2exp_lightning.utils import tensor_argument
from agg2exp_lightning.utils.options import look_up_option, nearest, nonnegative_float, positive_int

__all__ = [  # the shared checks are re-exported for the engine's modules
    "CanonicalMethodName", "check_image", "check_label_map", "check_options", "check_targets", "check_window",
    "look_up_option", "nonnegative_float", "positive_int",
]

#: The paper's method names, in its order (the table of every method: :mod:`agg2exp_lightning.explain.methods`).
CanonicalMethodName = Literal[
    "vanilla_gradient",
    "smoothgrad",
    "integrated_gradients",
    "kernelshap_cubes",
    "kernelshap_semantic",
]


def check_options(method: str, options: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject keyword options that ``method`` does not take (a typo would otherwise be ignored)."""
    allowed = sorted(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hints = []
        for u in unknown:
            close = nearest(u, allowed)
            hints.append(f"{u!r}" + (f" (did you mean {close!r}?)" if close else ""))
        raise ValueError(f"Unknown option(s) {', '.join(hints)} for method {method!r}; it accepts {allowed}")


def check_image(image: Any, spatial_dims: int) -> Tensor:
    """A ``[1, 1, *S]`` float copy of ``image`` (``[1, *S]`` or ``[1, 1, *S]``), detached and finite."""
    image = tensor_argument("image", image, "a torch.Tensor")
    shape = tuple(image.shape)
    if image.dim() == spatial_dims + 1:
        if shape[0] != 1:
            raise ValueError(f"Expected argument `image` of shape [1, *S] (one channel), but got shape {shape} with {shape[0]} channels")
        image = image.unsqueeze(0)
    elif image.dim() == spatial_dims + 2:
        if shape[0] != 1 or shape[1] != 1:
            raise ValueError(f"Expected argument `image` of shape [1, 1, *S] (one scan, one channel), but got shape {shape}")
    else:
        raise ValueError(
            f"Expected argument `image` of shape [1, *S] or [1, 1, *S] with {spatial_dims} spatial dims, but got shape {shape}"
        )
    if any(s < 1 for s in image.shape[2:]):
        raise ValueError(f"Expected argument `image` with non-empty spatial dims, but got shape {shape}")
    if not image.is_floating_point():
        image = image.to(torch.float32)
    with torch.inference_mode(False):
        image = image.detach().clone()  # a fresh normal tensor, even from an inference tensor
    if not bool(torch.isfinite(image).all()):
        bad = int((~torch.isfinite(image)).sum())
        raise NonFiniteError(f"Expected argument `image` to be finite, but it holds {bad} NaN or infinite voxels", what="image")
    return image


def check_targets(targets: Any, num_classes: int) -> list[int]:
    """Distinct class ids in ``[0, num_classes)`` (``None``: all classes)."""
    if targets is None:
        return list(range(num_classes))
    if isinstance(targets, (int, np.integer)) and not isinstance(targets, bool):
        targets = [targets]
    if isinstance(targets, Tensor):
        targets = targets.reshape(-1).tolist()
    out = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < num_classes:
            raise ValueError(f"Expected argument `targets` to hold class ids in [0, {num_classes}), but got {t!r}")
        out.append(int(t))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"Expected argument `targets` to be a non-empty list of distinct class ids, but got {list(targets)!r}")
    return out


def check_label_map(name: str, labels: Any, spatial: Sequence[int], device: torch.device) -> Tensor:
    """An int64 label map of spatial shape ``spatial`` (``[*S]`` or ``[1, *S]``)."""
    labels = tensor_argument(name, labels, f"an integer tensor of shape {tuple(spatial)}")
    if labels.dim() == len(spatial) + 1 and labels.shape[0] == 1:
        labels = labels[0]
    if tuple(labels.shape) != tuple(spatial):
        raise ValueError(f"Expected argument `{name}` of shape {tuple(spatial)} (the image's spatial shape), but got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise ValueError(f"Expected argument `{name}` to hold integer labels, but it holds fractional values")
    elif labels.dtype == torch.bool:
        raise ValueError(f"Expected argument `{name}` to hold integer labels, but got a boolean mask")
    with torch.inference_mode(False):
        return labels.detach().to(device=device, dtype=torch.long).clone()


def check_window(roi_size: Any, spatial_dims: int, sw_batch_size: Any, overlap: Any, mode: Any, sigma_scale: Any) -> dict[str, Any] | None:
    """Validated sliding-window settings (``None`` when ``roi_size`` is ``None``)."""
    if roi_size is None:
        return None
    if isinstance(roi_size, (int, np.integer)):
        roi_size = (roi_size,) * spatial_dims
    roi = tuple(roi_size)
    if len(roi) != spatial_dims:
        raise ValueError(f"Expected argument `roi_size` with {spatial_dims} entries, but got {roi_size!r}")
    roi = tuple(positive_int("roi_size", r) for r in roi)
    ov = overlap if isinstance(overlap, Sequence) else (overlap,) * spatial_dims
    if len(ov) != spatial_dims or any(
        isinstance(o, bool) or not isinstance(o, (int, float, np.floating)) or not 0 <= o < 1 for o in ov
    ):
        raise ValueError(f"Expected argument `overlap` in [0, 1) (or one value per spatial dim), but got {overlap!r}")
    sig = sigma_scale if isinstance(sigma_scale, Sequence) else (sigma_scale,) * spatial_dims
    if len(sig) != spatial_dims or any(not isinstance(s, (int, float)) or isinstance(s, bool) or s <= 0 for s in sig):
        raise ValueError(f"Expected argument `sigma_scale` > 0 (or one value per spatial dim), but got {sigma_scale!r}")
    return {
        "roi_size": roi,
        "sw_batch_size": positive_int("sw_batch_size", sw_batch_size),
        "overlap": tuple(float(o) for o in ov),
        "mode": look_up_option("mode", mode, ("constant", "gaussian")),
        "sigma_scale": tuple(float(s) for s in sig),
    }

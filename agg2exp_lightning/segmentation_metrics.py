"""Segmentation quality as plain tensor functions."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def dice_per_class(prediction: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Dice of each class between two label maps of one scan.

    Args:
        prediction: integer label map ``[*S]``.
        target: integer label map ``[*S]``.
        num_classes: number of classes ``C``.

    Returns:
        ``[C]`` float64: ``2|P∩T| / (|P|+|T|)`` per class; NaN where the class is absent from both
        (an undefined Dice, left out of NaN-aware means), 0 where it is in only one.

    Example:
        >>> dice_per_class(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), 3)
        tensor([1.0000, 0.6667, 0.0000], dtype=torch.float64)
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from target shape {tuple(target.shape)}")
    p = prediction.reshape(-1).long()
    t = target.reshape(-1).long()
    inter = torch.bincount(p[p == t], minlength=num_classes)[:num_classes].double()
    sizes = (torch.bincount(p, minlength=num_classes)[:num_classes] + torch.bincount(t, minlength=num_classes)[:num_classes]).double()
    dice = 2 * inter / sizes
    return torch.where(sizes > 0, dice, torch.full_like(dice, float("nan")))


def mean_dice_per_class(per_scan: Mapping[str, Tensor], num_classes: int) -> Tensor:
    """``[C]`` mean Dice over scans, each class over the scans where it is defined (not NaN).

    Args:
        per_scan: subject id -> ``[C]`` Dice of that scan (:func:`dice_per_class`; NaN: the class is
            absent from both prediction and label).
        num_classes: ``C``.

    Returns:
        float64 ``[C]``; NaN for a class undefined in every scan.

    Example:
        >>> mean_dice_per_class({"a": torch.tensor([1.0, 0.5]), "b": torch.tensor([0.0, float("nan")])}, 2)
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    if not per_scan:
        return torch.full((num_classes,), float("nan"), dtype=torch.float64)
    stacked = torch.stack([torch.as_tensor(per_scan[k], dtype=torch.float64).reshape(-1) for k in sorted(per_scan)])
    if stacked.shape[1] != num_classes:
        raise ValueError(f"Expected per-scan Dice of {num_classes} classes, but got {stacked.shape[1]}")
    defined = ~torch.isnan(stacked)
    total = torch.where(defined, stacked, torch.zeros_like(stacked)).sum(0)
    count = defined.sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))

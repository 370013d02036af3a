"""Segmentation quality as plain tensor functions."""
from __future__ import annotations

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

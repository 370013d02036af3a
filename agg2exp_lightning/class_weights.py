"""Class weights for the segmentation loss, from how often each label occurs in the training scans.

With uniform weights the loss is ruled by background, lungs and bones; small structures (thyroid,
pulmonary veins, trachea) switch on late. On the demo cohort, weighting the DiceCE loss by the
inverse square root of each label's voxel frequency raised the mean foreground validation Dice after
8 epochs (208 steps) from 0.137 to 0.631, same seed and schedule (``python benchmarks/class_weighting.py``).

Pure maths over voxel counts: the data side counts them
(:meth:`agg2exp_lightning.data.datamodule.ThoraxDataModule.label_voxel_counts`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: Weighting schemes :func:`class_weights` accepts by name.
SCHEMES: tuple[str, ...] = ("inverse_sqrt_frequency", "inverse_frequency")


def class_weights(counts: Sequence[float] | Tensor, scheme: str = "inverse_sqrt_frequency") -> Tensor:
    """Per-class loss weights from voxel counts, scaled so that the mean weight per voxel is 1.

    Args:
        counts: ``[C]`` voxels of each class over the training scans.
        scheme: ``"inverse_sqrt_frequency"`` (``w_c ~ f_c^-1/2``) or ``"inverse_frequency"`` (``w_c ~ 1/f_c``).

    Returns:
        ``[C]`` float32 weights with ``sum_c f_c w_c = 1``; a class with no voxels gets the largest
        weight of the others (it cannot change the loss until it appears, and must not be ignored then).

    Raises:
        ValueError: a negative or non-finite count, no voxels at all, or an unknown scheme.

    Example:
        >>> class_weights([75, 25, 0], "inverse_frequency")
        tensor([0.6667, 2.0000, 2.0000])
    """
    c = torch.as_tensor(counts, dtype=torch.float64).flatten()
    if c.numel() == 0 or not bool(torch.isfinite(c).all()) or bool((c < 0).any()) or float(c.sum()) <= 0:
        raise ValueError(f"Expected argument `counts` to be non-negative finite voxel counts with a positive sum, but got {c.tolist()}")
    if scheme not in SCHEMES:
        raise ValueError(f"Expected argument `scheme` to be one of {SCHEMES}, but got {scheme!r}")
    freq = c / c.sum()
    present = freq > 0
    power = 0.5 if scheme == "inverse_sqrt_frequency" else 1.0
    w = torch.zeros_like(freq)
    w[present] = freq[present] ** -power
    w = w / float((w * freq).sum())
    w[~present] = w[present].max()
    return w.float().as_subclass(torch.Tensor)

"""Effective complexity: the share of voxels whose attribution is not negligible."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from agg2exp_lightning.evaluation._checks import check_attributions, warn_undefined, zero_targets

__all__ = ["effective_complexity"]


def effective_complexity(attributions: Tensor | np.ndarray, eps: float = 0.1) -> Tensor:
    """Fraction of voxels with ``|a| / max|a| > eps``, one value per attribution map.

    This is Nguyen & Martinez's effective complexity with the Agg2Exp settings (``eps = 0.1``) and
    expressed as a fraction of the ``N`` voxels instead of a count, so that scans of different sizes
    compare. Quantus' ``EffectiveComplexity(eps, abs=True, normalise=True)`` returns the count for one
    map (``normalise_by_max`` over the whole batch, hence one map per batch to agree): the count is
    ``N`` times this value.

    Args:
        attributions: ``[T, *S]`` maps (one per target).
        eps: threshold on the max-normalised magnitude, in ``[0, 1)``.

    Returns:
        ``[T]`` float64 fractions in ``[0, 1]``. A map of zeros has no maximum to normalise by: its
        value is NaN, with an :class:`UndefinedScoreWarning`.

    Raises:
        ValueError: ``attributions`` is not ``[T, *S]`` or not finite; ``eps`` outside ``[0, 1)``.

    Example:
        >>> a = torch.zeros(1, 4, 4, 4); a[0, 0, 0, :3] = 1.0
        >>> effective_complexity(a)  # 3 of 64 voxels
        tensor([0.0469], dtype=torch.float64)
    """
    a = check_attributions(attributions)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= float(eps) < 1.0:
        raise ValueError(f"Expected argument `eps` to be a number in [0, 1), but got {eps!r}")
    flat = a.reshape(a.shape[0], -1).abs().to(torch.float64)
    peak = flat.max(dim=1, keepdim=True).values.clamp_min(torch.finfo(torch.float64).tiny)
    fraction = (flat / peak > float(eps)).sum(dim=1).to(torch.float64) / flat.shape[1]
    zeros = zero_targets(a)
    if zeros:
        warn_undefined(f"effective complexity is undefined for all-zero attribution maps (targets at {zeros}): NaN")
        fraction[zeros] = float("nan")
    return fraction

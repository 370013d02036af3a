"""Average and maximum sensitivity (Yeh et al., 2019) of attributions to small input noise.

For noisy copies ``x'_r = x + u_r`` with ``u_r ~ U(-radius, radius)`` per voxel, the attributions are
recomputed and compared to those of ``x``: ``d_r = ||a_hat - a'_hat||_F / ||a_hat||_F`` with ``a_hat``
each map divided by its own maximum magnitude (Agg2Exp: 3 samples, radius 0.1 on the [0, 1] windowed
CT). Average sensitivity is the mean of ``d_r`` over samples, maximum sensitivity the largest.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from agg2exp_lightning.evaluation._checks import (
    as_tensor,
    check_attributions,
    check_finite,
    positive_int,
    warn_undefined,
    zero_targets,
)

__all__ = ["SensitivityResult", "relative_distance", "sensitivity", "uniform_noise"]

#: ``explain_fn(image) -> attributions [T, *S]`` for one fixed list of targets.
ExplainFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SensitivityResult:
    """Sensitivity per target.

    Attributes:
        average: ``[T]`` mean relative distance over the noisy samples.
        maximum: ``[T]`` largest relative distance.
        distances: ``[T, R]`` relative distance of every sample.
    """

    average: Tensor
    maximum: Tensor
    distances: Tensor


def uniform_noise(
    shape: tuple[int, ...], n_samples: int = 3, radius: float = 0.1, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """``[n_samples, *shape]`` float64 noise drawn uniformly from ``[-radius, radius)``."""
    n_samples = positive_int("n_samples", n_samples)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0 or not np.isfinite(radius):
        raise ValueError(f"Expected argument `radius` to be a positive number, but got {radius!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return gen.uniform(-radius, radius, size=(n_samples, *shape))


def _max_normalised(a: Tensor) -> Tensor:
    """Each map divided by its largest magnitude; an all-zero map stays zero (as Quantus' normalise_by_max)."""
    flat = a.reshape(a.shape[0], -1).to(torch.float64)
    peak = flat.abs().max(dim=1, keepdim=True).values
    return flat / torch.where(peak > 0, peak, torch.ones_like(peak))


def relative_distance(
    reference: Tensor | np.ndarray, perturbed: Tensor | np.ndarray, *, normalise: bool = True, warn: bool = True
) -> Tensor:
    """``[T]`` float64 ``||a - a'||_F / ||a||_F`` per map, after max-normalising each map when ``normalise``.

    Args:
        reference: ``[T, *S]`` attributions of the clean input.
        perturbed: ``[T, *S]`` attributions of a noisy input.
        normalise: divide every map by its own maximum magnitude first (the paper's setting).
        warn: warn about all-zero reference maps.

    Returns:
        ``[T]`` distances; NaN, with an :class:`UndefinedScoreWarning`, for an all-zero reference map.

    Raises:
        ValueError: shapes differ or values are not finite.
    """
    a = check_attributions(reference, "reference")
    b = check_attributions(perturbed, "perturbed")
    if a.shape != b.shape:
        raise ValueError(f"Expected `perturbed` of the shape of `reference` {tuple(a.shape)}, but got {tuple(b.shape)}")
    if normalise:
        fa, fb = _max_normalised(a), _max_normalised(b.to(a.device))
    else:
        fa = a.reshape(a.shape[0], -1).to(torch.float64)
        fb = b.to(a.device).reshape(b.shape[0], -1).to(torch.float64)
    dist = (torch.linalg.vector_norm(fa - fb, dim=1) / torch.linalg.vector_norm(fa, dim=1)).cpu()
    zeros = zero_targets(a)
    if zeros and warn:
        warn_undefined(f"sensitivity is undefined for all-zero reference attribution maps (targets at {zeros}): NaN")
    dist[zeros] = float("nan")
    return dist


def sensitivity(
    explain_fn: ExplainFn,
    image: Tensor | np.ndarray,
    attributions: Tensor | np.ndarray | None = None,
    *,
    n_samples: int = 3,
    radius: float = 0.1,
    noise: Tensor | np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    normalise: bool = True,
) -> SensitivityResult:
    """Average and maximum sensitivity of ``explain_fn`` at ``image`` (paper: 3 samples, radius 0.1).

    Args:
        explain_fn: ``image -> [T, *S]`` attributions for a fixed list of targets; called once per noisy
            copy, with a tensor of ``image``'s shape, dtype and device.
        image: the scan, any shape ``explain_fn`` takes (e.g. ``[C, *S]``).
        attributions: ``[T, *S]`` attributions of the clean ``image`` (computed with ``explain_fn`` if None).
        n_samples, radius: number of noisy copies and the noise half-width (ignored when ``noise`` is given).
        noise: ``[R, *image.shape]`` noise to add instead of drawing it; the sum is formed in float64 and
            cast to ``image``'s dtype (as Quantus' ``batch_uniform_noise`` does).
        rng: numpy Generator or seed for drawing the noise.
        normalise: max-normalise each map before comparing (paper).

    Returns:
        A :class:`SensitivityResult`; NaN, with a warning, for targets whose clean map is all zeros.

    Raises:
        ValueError: non-finite image or noise, noise of the wrong shape, or attributions from
            ``explain_fn`` of another shape or not finite.

    Example:
        >>> w = torch.rand(2, 4, 4, 4)
        >>> res = sensitivity(lambda x: w * x**2, torch.rand(1, 4, 4, 4), rng=0)
        >>> res.average.shape
        torch.Size([2])
    """
    x = as_tensor("image", image)
    check_finite("image", x)
    if noise is None:
        noise = uniform_noise(tuple(x.shape), n_samples, radius, rng)
    u = torch.as_tensor(noise, dtype=torch.float64)
    if u.dim() != x.dim() + 1 or tuple(u.shape[1:]) != tuple(x.shape) or u.shape[0] < 1:
        raise ValueError(f"Expected argument `noise` of shape [R, *image.shape] = [R, {', '.join(map(str, x.shape))}], "
                         f"but got {tuple(u.shape)}")
    check_finite("noise", u)
    if attributions is None:
        attributions = explain_fn(x)
    a = check_attributions(attributions)
    zeros = zero_targets(a)
    if zeros:
        warn_undefined(f"sensitivity is undefined for all-zero attribution maps of the clean image (targets at {zeros}): NaN")
    distances = []
    for r in range(u.shape[0]):
        noisy = (x.to(torch.float64) + u[r].to(x.device)).to(x.dtype)
        a_noisy = explain_fn(noisy)
        a_noisy = check_attributions(a_noisy, f"explain_fn(noisy image {r})")
        if a_noisy.shape != a.shape:
            raise ValueError(f"Expected `explain_fn` to return attributions of shape {tuple(a.shape)} for a noisy image, "
                             f"but got {tuple(a_noisy.shape)}")
        distances.append(relative_distance(a, a_noisy, normalise=normalise, warn=False))
    d = torch.stack(distances, dim=1)
    return SensitivityResult(average=d.mean(dim=1), maximum=d.max(dim=1).values, distances=d)

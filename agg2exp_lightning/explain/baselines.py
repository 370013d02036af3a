"""Reference inputs ("baselines") for Integrated Gradients and KernelSHAP."""
from __future__ import annotations

import math
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from agg2exp_lightning.utils.options import did_you_mean

__all__ = ["BASELINES", "gaussian_blur", "make_baseline"]

#: Named baselines accepted by :func:`make_baseline`.
BASELINES: tuple[str, ...] = ("zero", "constant", "mean", "gaussian", "blurred")

BaselineSpec = Union[Literal["zero", "constant", "mean", "gaussian", "blurred"], float, int, Tensor]


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur of ``x`` ``[B, C, *S]`` over its spatial dims, edges replicated.

    Matches ``scipy.ndimage.gaussian_filter(x, sigma, mode="nearest", truncate=truncate)`` per
    channel (same kernel: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1).

    Args:
        x: ``[B, C, *S]`` tensor.
        sigma: standard deviation in voxels (> 0).
        truncate: kernel radius in standard deviations.

    Returns:
        The blurred tensor, same shape and dtype.
    """
    if not sigma > 0:
        raise ValueError(f"Expected argument `sigma` > 0, but got {sigma!r}")
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    spatial = x.dim() - 2
    b, c = x.shape[:2]
    out = x.reshape(b * c, 1, *x.shape[2:])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    for d in range(spatial):
        shape = [1, 1] + [1] * spatial
        shape[2 + d] = 2 * radius + 1
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - d)] = pad[2 * (spatial - 1 - d) + 1] = radius
        size = out.shape[2 + d]
        if radius >= size:  # replicate padding longer than the axis: index the edge voxels instead
            idx = torch.arange(-radius, size + radius, device=x.device).clamp(0, size - 1)
            padded = out.index_select(2 + d, idx)
        else:
            padded = F.pad(out, pad, mode="replicate")
        out = conv(padded, kernel.view(shape))
    return out.reshape(x.shape)


def make_baseline(
    image: Tensor,
    baseline: BaselineSpec = "zero",
    *,
    value: float = 0.0,
    sigma: float | None = None,
    blur_sigma: float = 5.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The reference input for ``image`` ``[1, 1, *S]``.

    Args:
        image: the input.
        baseline: ``"zero"``; ``"constant"`` (every voxel ``value``); ``"mean"`` (the image's mean
            intensity); ``"gaussian"`` (``image`` plus noise ``N(0, sigma^2)``, ``sigma`` defaulting
            to ``0.1 * (max - min)``); ``"blurred"`` (Gaussian blur with ``blur_sigma`` voxels);
            a number (constant); or a tensor broadcastable to ``image``.
        value: the constant of ``"constant"``.
        sigma: noise level of ``"gaussian"``.
        blur_sigma: blur of ``"blurred"`` (voxels).
        generator: random source of ``"gaussian"``.

    Returns:
        ``[1, 1, *S]`` baseline, detached.

    Raises:
        ValueError: unknown name, a tensor of the wrong shape, or non-finite values.
    """
    if isinstance(baseline, Tensor):
        try:
            out = torch.broadcast_to(baseline.to(device=image.device, dtype=image.dtype), image.shape).clone()
        except RuntimeError:
            raise ValueError(f"Expected argument `baseline` broadcastable to the image shape {tuple(image.shape)}, but got shape {tuple(baseline.shape)}") from None
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        out = torch.full_like(image, float(baseline))
    elif baseline == "zero":
        out = torch.zeros_like(image)
    elif baseline == "constant":
        out = torch.full_like(image, float(value))
    elif baseline == "mean":
        out = torch.full_like(image, float(image.mean()))
    elif baseline == "gaussian":
        std = 0.1 * float(image.max() - image.min()) if sigma is None else float(sigma)
        noise = torch.randn(image.shape, generator=generator, dtype=image.dtype, device="cpu").to(image.device)
        out = image + std * noise
    elif baseline == "blurred":
        out = gaussian_blur(image, float(blur_sigma))
    else:
        raise ValueError(f"Expected argument `baseline` to be one of {list(BASELINES)}, a number or a tensor, "
                         f"but got {baseline!r}{did_you_mean(baseline, BASELINES)}")
    out = out.detach()
    if not bool(torch.isfinite(out).all()) or (isinstance(baseline, (int, float)) and not math.isfinite(float(baseline))):
        raise ValueError("Expected argument `baseline` to be finite, but it holds NaN or infinite values")
    return out

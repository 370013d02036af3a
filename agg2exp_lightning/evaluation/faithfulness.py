"""Faithfulness correlation (Bhatt et al., 2020) of attribution maps for a segmentation model's proxy.

For run ``r`` a random subset ``S_r`` of voxels is replaced by a baseline; the metric is the Pearson
correlation over runs between the attribution mass of the subset, ``sum_{v in S_r} a_v``, and the drop
of the proxy output, ``f(x) - f(x with S_r -> baseline)``. All targets share one set of perturbed
forward passes: the proxy of every target is read off the same logits.

The proxy's mask (voxels predicted as the target class) can be

* ``"fixed"``: taken from the unperturbed prediction and held, as the attributions themselves are
  computed (Agg2Exp); a linear model then has a known answer (correlation 1 for its exact
  contributions), or
* ``"recomputed"``: taken from each perturbed prediction, as the Agg2Exp paper's evaluation did.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor, nn

from agg2exp_lightning.evaluation._checks import (
    as_tensor,
    check_attributions,
    check_finite,
    check_image_and_attributions,
    inference,
    model_device,
    positive_int,
    target_list,
    warn_undefined,
    zero_targets,
)
from agg2exp_lightning.explain.proxy import prediction_labels, proxy_output
from agg2exp_lightning.protocols import ProtocolLike, resolve_protocol

log = logging.getLogger(__name__)

__all__ = [
    "FaithfulnessResult",
    "attribution_sums",
    "faithfulness_correlation",
    "output_drops",
    "pearson_rows",
    "random_subsets",
]

Baseline = Union[Literal["min"], float]
MaskMode = Literal["fixed", "recomputed"]
#: The paper's subset size: 224 x 224 voxels.
PAPER_SUBSET_SIZE = 50_176
_SUM_CHUNK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class FaithfulnessResult:
    """Faithfulness correlation per target and the pairs it correlates.

    Attributes:
        correlation: ``[T]`` Pearson correlations (float64; NaN where undefined).
        attribution_sums: ``[T, R]`` attribution mass of each run's subset.
        output_drops: ``[T, R]`` proxy drop of each run.
    """

    correlation: Tensor
    attribution_sums: Tensor
    output_drops: Tensor


def random_subsets(
    n_voxels: int, subset_size: int, n_runs: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """``[n_runs, subset_size]`` voxel indices, each row drawn without replacement.

    Args:
        n_voxels: number of voxels ``N`` of the scan.
        subset_size: voxels per subset, ``1 <= subset_size < N``.
        n_runs: number of subsets (at least 2 for a correlation).
        rng: a numpy Generator or a seed (``None``: fresh entropy).

    Raises:
        ValueError: a size out of range.
    """
    n_voxels = positive_int("n_voxels", n_voxels)
    subset_size = positive_int("subset_size", subset_size)
    n_runs = positive_int("n_runs", n_runs, minimum=2)
    if subset_size >= n_voxels:
        raise ValueError(
            f"Expected argument `subset_size` to be smaller than the number of voxels ({n_voxels}), but got {subset_size}"
        )
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return np.stack([gen.choice(n_voxels, subset_size, replace=False) for _ in range(n_runs)]).astype(np.int64)


def _check_subsets(subsets: np.ndarray | Tensor, n_voxels: int, distinct: bool = True) -> Tensor:
    s = torch.as_tensor(subsets)
    if s.dim() != 2 or s.shape[0] < 2 or s.shape[1] < 1 or s.dtype.is_floating_point or s.dtype == torch.bool:
        raise ValueError(
            f"Expected argument `subsets` to be integer voxel indices of shape [n_runs >= 2, subset_size], "
            f"but got shape {tuple(s.shape)} and dtype {s.dtype}"
        )
    s = s.to(torch.int64)
    if s.shape[1] >= n_voxels:
        raise ValueError(
            f"Expected argument `subsets` with fewer than {n_voxels} voxels per run (the scan's size), got {s.shape[1]}"
        )
    if int(s.min()) < 0 or int(s.max()) >= n_voxels:
        raise ValueError(f"Expected argument `subsets` to index voxels in [0, {n_voxels}), got [{int(s.min())}, {int(s.max())}]")
    ordered = s.sort(dim=1).values if distinct else None
    if distinct and bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError("Expected argument `subsets` to hold distinct voxels in each run (drawn without replacement)")
    return s


def attribution_sums(
    attributions: Tensor | np.ndarray, subsets: np.ndarray | Tensor, *, check_distinct: bool = True
) -> Tensor:
    """``[T, R]`` float64 attribution mass ``sum_{v in S_r} a_t[v]`` of every target and subset.

    Args:
        attributions: ``[T, *S]`` maps.
        subsets: ``[R, K]`` flat voxel indices.
        check_distinct: verify that no run repeats a voxel (a sort of the subsets; skip it for subsets
            from :func:`random_subsets`, distinct by construction).
    """
    a = check_attributions(attributions)
    flat = a.reshape(a.shape[0], -1).to(torch.float64)
    s = _check_subsets(subsets, flat.shape[1], check_distinct).to(flat.device)
    step = max(1, _SUM_CHUNK_BYTES // (8 * flat.shape[0] * s.shape[1]))
    sums = [flat[:, s[i : i + step]].sum(dim=-1) for i in range(0, s.shape[0], step)]
    return torch.cat(sums, dim=1).cpu()


def _logits_fn(
    model: nn.Module, roi_size: Sequence[int] | None, sw_batch_size: int, overlap: float, sw_mode: str
) -> Callable[[Tensor], Tensor]:
    if roi_size is None:
        return model
    from monai.inferers import sliding_window_inference

    roi = tuple(positive_int("roi_size", int(r)) for r in roi_size)
    return lambda x: sliding_window_inference(x, roi, sw_batch_size, model, overlap=overlap, mode=sw_mode)


def output_drops(
    model: nn.Module,
    image: Tensor | np.ndarray,
    targets: Sequence[int] | Tensor,
    subsets: np.ndarray | Tensor,
    *,
    baseline: Baseline = "min",
    mask: MaskMode = "fixed",
    batch_size: int = 2,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    sw_mode: str = "constant",
    check_distinct: bool = True,
) -> Tensor:
    """``[T, R]`` float64 proxy drops ``f_t(x) - f_t(x with S_r -> baseline)`` from one set of forward passes.

    Args:
        model: segmentation network, ``[B, C_in, *S] -> [B, classes, *S]`` logits.
        image: the scan, ``[C_in, *S]``.
        targets: class ids ``t`` of the proxies.
        subsets: ``[R, K]`` flat voxel indices (e.g. from :func:`random_subsets`).
        baseline: replacement value, ``"min"`` for the scan's minimum (paper) or a number.
        mask: ``"fixed"`` (mask of the unperturbed prediction) or ``"recomputed"`` (each perturbed one's).
        batch_size: perturbed copies per forward pass.
        roi_size: when given, logits come from MONAI sliding-window inference with windows of this size,
            ``sw_batch_size`` windows per pass, ``overlap`` and blending ``sw_mode``.
        check_distinct: see :func:`attribution_sums`.

    Raises:
        ValueError: a bad argument; a constant image with ``baseline="min"`` (no perturbation changes it).
    """
    if mask not in ("fixed", "recomputed"):
        raise ValueError(f"Expected argument `mask` to be 'fixed' or 'recomputed', but got {mask!r}")
    batch_size = positive_int("batch_size", batch_size)
    x = as_tensor("image", image)
    if x.dim() < 2:
        raise ValueError(f"Expected argument `image` of shape [C, *spatial], but got shape {tuple(x.shape)}")
    check_finite("image", x)
    flat = x.reshape(x.shape[0], -1)
    s = _check_subsets(subsets, flat.shape[1], check_distinct)
    t = target_list(targets)
    if isinstance(baseline, str):
        if baseline != "min":
            raise ValueError(f"Expected argument `baseline` to be 'min' or a number, but got {baseline!r}")
        if bool((flat == flat.flatten()[0]).all()):
            raise ValueError("Argument `image` is constant: replacing voxels by its minimum changes nothing, so the "
                             "faithfulness correlation is undefined")
        value = float(flat.min())
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool) and np.isfinite(baseline):
        value = float(baseline)
    else:
        raise ValueError(f"Expected argument `baseline` to be 'min' or a finite number, but got {baseline!r}")
    device = model_device(model, x.device)
    flat = flat.to(device)
    s = s.to(device)
    forward = _logits_fn(model, roi_size, sw_batch_size, overlap, sw_mode)
    channels, spatial = x.shape[0], tuple(x.shape[1:])
    with inference(model):
        logits = forward(flat.reshape(1, channels, *spatial))
        if max(t) >= logits.shape[1]:
            raise ValueError(f"Expected `targets` to be class ids below {logits.shape[1]} (the model's classes), got {t}")
        labels = prediction_labels(logits)[0]
        reference = proxy_output(logits, labels, t)[0].to(torch.float64)
        del logits
        drops = []
        for start in range(0, s.shape[0], batch_size):
            idx = s[start : start + batch_size]
            batch = flat.unsqueeze(0).repeat(idx.shape[0], 1, 1)
            batch.scatter_(2, idx.unsqueeze(1).expand(-1, channels, -1), value)
            logits = forward(batch.reshape(idx.shape[0], channels, *spatial))
            mask_labels = labels if mask == "fixed" else prediction_labels(logits)
            drops.append(reference.unsqueeze(0) - proxy_output(logits, mask_labels, t).to(torch.float64))
            log.debug("faithfulness: %d / %d perturbed passes", start + idx.shape[0], s.shape[0])
    return torch.cat(drops, dim=0).T.contiguous().cpu()


def pearson_rows(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, names: tuple[str, str] = ("x", "y")) -> Tensor:
    """Pearson correlation of each row pair of ``[T, R]`` arrays, in float64.

    A row that is constant (the correlation is undefined) gives NaN with an :class:`UndefinedScoreWarning`
    naming it through ``names``.
    """
    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] < 2:
        raise ValueError(f"Expected `{names[0]}` and `{names[1]}` of one shape [T, R >= 2], got {tuple(a.shape)} and {tuple(b.shape)}")
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    r = (ac * bc).sum(dim=1) / torch.sqrt((ac * ac).sum(dim=1) * (bc * bc).sum(dim=1))
    r = r.clamp(-1.0, 1.0)
    for name, values in zip(names, (a, b)):
        constant = (values.max(dim=1).values == values.min(dim=1).values).nonzero().flatten().tolist()
        if constant:
            warn_undefined(f"faithfulness correlation is undefined where `{name}` is constant over runs "
                           f"(targets at {constant}): NaN")
            r[constant] = float("nan")
    return r


def faithfulness_correlation(
    model: nn.Module,
    image: Tensor | np.ndarray,
    attributions: Tensor | np.ndarray,
    targets: Sequence[int] | Tensor,
    *,
    n_runs: int = 100,
    subset_size: int = PAPER_SUBSET_SIZE,
    baseline: Baseline = "min",
    mask: MaskMode | None = None,
    subsets: np.ndarray | Tensor | None = None,
    rng: np.random.Generator | int | None = None,
    batch_size: int = 2,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    sw_mode: str = "constant",
    protocol: ProtocolLike = None,
) -> FaithfulnessResult:
    """Faithfulness correlation of every target's attribution map (paper defaults: 100 runs of 50,176 voxels, min baseline).

    Args:
        model: segmentation network returning logits ``[B, classes, *S]``.
        image: the scan ``[C_in, *S]`` (or ``[1, C_in, *S]``).
        attributions: ``[T, *S]``, map ``t`` explaining the proxy of class ``targets[t]``.
        targets: ``T`` class ids.
        n_runs, subset_size: number and size of random subsets (ignored when ``subsets`` is given).
        baseline, mask, batch_size, roi_size, sw_batch_size, overlap, sw_mode: see :func:`output_drops`.
        subsets: ``[R, K]`` voxel indices to use instead of drawing them (reproducibility, references).
        rng: numpy Generator or seed for drawing the subsets.
        protocol: gives ``mask`` when it is ``None``: ``"corrected"`` (default) holds it fixed,
            ``"paper"`` recomputes it (:mod:`agg2exp_lightning.protocols`).

    Returns:
        A :class:`FaithfulnessResult`; ``correlation[t]`` is NaN, with a warning, where it is undefined:
        an all-zero or constant map, or a proxy that no subset changes.

    Raises:
        ValueError: attributions not ``[T, *S]`` of the image's spatial shape or not finite; ``targets``
            not one per map; a subset size not below the number of voxels; a constant image.

    Example:
        >>> net = torch.nn.Conv3d(1, 3, 3, padding=1)
        >>> x = torch.rand(1, 8, 8, 8)
        >>> res = faithfulness_correlation(net, x, torch.rand(2, 8, 8, 8), [0, 1], n_runs=10, subset_size=50)
        >>> res.correlation.shape
        torch.Size([2])
    """
    if mask is None:
        mask = resolve_protocol(protocol).faithfulness_mask
    x, a = check_image_and_attributions(image, attributions)
    t = target_list(targets, a.shape[0])
    n_voxels = int(np.prod(a.shape[1:]))
    if subsets is None:
        subsets = random_subsets(n_voxels, subset_size, n_runs, rng)
    else:
        subsets = _check_subsets(subsets, n_voxels)  # once, not in both steps below
    sums = attribution_sums(a, subsets, check_distinct=False)
    drops = output_drops(model, x, t, subsets, baseline=baseline, mask=mask, batch_size=batch_size, roi_size=roi_size,
                         sw_batch_size=sw_batch_size, overlap=overlap, sw_mode=sw_mode, check_distinct=False)
    corr = torch.full((len(t),), float("nan"), dtype=torch.float64)
    zeros = zero_targets(a)
    if zeros:
        warn_undefined(f"faithfulness correlation is undefined for all-zero attribution maps (targets at {zeros}): NaN")
    rest = [i for i in range(len(t)) if i not in zeros]
    if rest:
        corr[rest] = pearson_rows(sums[rest], drops[rest], names=("attribution sums", "output drops"))
    return FaithfulnessResult(correlation=corr, attribution_sums=sums, output_drops=drops)

"""Aggregation of attribution maps into region-of-interest (RoI) importance, Agg2Exp's core.

For explained class ``a`` and region ``b`` the mass share is
``e_{b->a} = sum_{v in b} s(E_a(v)) / sum_v s(E_a(v))`` with ``s = |.|`` (or the positive or
negative part); the mean is ``sum_{v in b} s(E_a(v)) / |b|``. Undefined entries are NaN, never an
error: an empty region (no voxel on this scan) has neither share nor mean, so it drops out of
NaN-aware cohort means instead of counting as 0; an all-zero map (e.g. a class the model does not
predict anywhere, for the gradient methods) has no shares at all.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor

from agg2exp_lightning.errors import NonFiniteError
from agg2exp_lightning.utils import tensor_argument

__all__ = ["mean_roi_over_scans", "merge_regions", "region_masses", "roi_importance"]

ArrayLike = Union[Tensor, np.ndarray]


def _signed(attributions: Tensor, sign: str) -> Tensor:
    if sign == "abs":
        return attributions.abs()
    if sign == "positive":
        return attributions.clamp_min(0)
    if sign == "negative":
        return (-attributions).clamp_min(0)
    raise ValueError(f"Expected argument `sign` to be one of ['abs', 'positive', 'negative'], but got {sign!r}")


def _as_tensor(name: str, value: ArrayLike) -> Tensor:
    return tensor_argument(name, value, "a tensor or numpy array")


def _extra_masks(extra_masks: ArrayLike | Sequence[ArrayLike] | None, spatial: tuple[int, ...], device: torch.device) -> Tensor:
    """``[K, *S]`` boolean masks (``K = 0`` when ``None``)."""
    if extra_masks is None:
        return torch.zeros((0, *spatial), dtype=torch.bool, device=device)
    if isinstance(extra_masks, (Tensor, np.ndarray)):
        masks = _as_tensor("extra_masks", extra_masks)
        masks = masks.unsqueeze(0) if tuple(masks.shape) == spatial else masks
    else:
        masks = torch.stack([_as_tensor("extra_masks", m) for m in extra_masks]) if len(extra_masks) else torch.zeros((0, *spatial))
    if tuple(masks.shape[1:]) != spatial:
        raise ValueError(f"Expected argument `extra_masks` of shape [K, {', '.join(map(str, spatial))}], but got shape {tuple(masks.shape)}")
    return masks.to(device=device).bool()


def region_masses(
    attributions: ArrayLike,
    regions: ArrayLike,
    num_regions: int,
    *,
    sign: Literal["abs", "positive", "negative"] = "abs",
    extra_masks: ArrayLike | Sequence[ArrayLike] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Summed ``s(attribution)`` per region, region sizes and total mass (float64).

    Returns:
        ``(inside [T, R + K], sizes [R + K], total [T])``.
    """
    a = _as_tensor("attributions", attributions)
    lab = _as_tensor("regions", regions)
    if a.dim() < 2:
        raise ValueError(f"Expected argument `attributions` of shape [T, *S], but got shape {tuple(a.shape)}")
    spatial = tuple(a.shape[1:])
    if tuple(lab.shape) != spatial:
        raise ValueError(f"Expected argument `regions` of shape {spatial} (the attributions' spatial shape), but got shape {tuple(lab.shape)}")
    if isinstance(num_regions, bool) or not isinstance(num_regions, (int, np.integer)) or num_regions < 1:
        raise ValueError(f"Expected argument `num_regions` to be an integer >= 1, but got {num_regions!r}")
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise ValueError(f"Expected argument `regions` to hold integer labels, but got dtype {lab.dtype}")
    if lab.numel() and int(lab.max()) >= num_regions:
        raise ValueError(f"Expected argument `regions` to hold labels < num_regions={num_regions}, but found label {int(lab.max())}")
    if not a.is_floating_point():
        a = a.double()
    if not bool(torch.isfinite(a).all()):
        raise NonFiniteError("Expected argument `attributions` to be finite, but it holds NaN or infinite values", what="attributions")
    s = _signed(a.detach().double(), sign).flatten(1)  # [T, V]
    flat = lab.to(device=s.device, dtype=torch.long).reshape(-1)
    valid = flat >= 0  # negative labels: voxels outside every region (still in the total)
    inside = torch.zeros((s.shape[0], int(num_regions)), dtype=torch.float64, device=s.device)
    inside.index_add_(1, flat[valid], s[:, valid])
    sizes = torch.bincount(flat[valid], minlength=int(num_regions)).double()
    masks = _extra_masks(extra_masks, spatial, s.device)
    if masks.shape[0]:
        m = masks.flatten(1).double()
        inside = torch.cat([inside, s @ m.T], dim=1)
        sizes = torch.cat([sizes, m.sum(1)])
    return inside, sizes, s.sum(1)


def roi_importance(
    attributions: ArrayLike,
    regions: ArrayLike,
    num_regions: int,
    reduce: Literal["mass", "mean"] = "mass",
    sign: Literal["abs", "positive", "negative"] = "abs",
    *,
    extra_masks: ArrayLike | Sequence[ArrayLike] | None = None,
    empty_regions: Literal["nan", "zero"] = "nan",
) -> Tensor:
    """RoI importance ``[T, R (+ K)]`` of attribution maps ``[T, *S]``.

    Args:
        attributions: one map per explained class.
        regions: ``[*S]`` integer labels in ``[0, num_regions)``; negative labels belong to no
            region (their mass still counts in the total).
        num_regions: ``R``.
        reduce: ``"mass"``: share of the map's mass inside each region (a row sums to 1 over
            non-overlapping regions covering the volume); ``"mean"``: mean ``s(attribution)``
            over each region's voxels.
        sign: ``s``: ``"abs"``, ``"positive"`` (positive part) or ``"negative"`` (negative part).
        extra_masks: ``[K, *S]`` (or a list of ``[*S]``) boolean masks appended as extra
            regions (they may overlap the labelled ones).
        empty_regions: the ``mass`` share of a region with no voxel on this scan: ``"nan"``
            (undefined; the default) or ``"zero"`` (none of the mass lies there, as the published
            aggregation writes it; see :mod:`agg2exp_lightning.protocols`). Its ``mean`` is NaN either way.

    Returns:
        float64 tensor. NaN where undefined: every entry of an empty region (no voxel; 0 for
        ``mass`` with ``empty_regions="zero"``), and the whole row of an all-zero map (``mass``; its
        ``mean`` entries are 0).

    Example:
        >>> a = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
        >>> roi_importance(a, torch.tensor([0, 0, 1, 2]), 3)
        tensor([[0.5000, 0.5000, 0.0000]], dtype=torch.float64)
    """
    if reduce not in ("mass", "mean"):
        raise ValueError(f"Expected argument `reduce` to be 'mass' or 'mean', but got {reduce!r}")
    if empty_regions not in ("nan", "zero"):
        raise ValueError(f"Expected argument `empty_regions` to be 'nan' or 'zero', but got {empty_regions!r}")
    inside, sizes, total = region_masses(attributions, regions, num_regions, sign=sign, extra_masks=extra_masks)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=inside.device)
    if reduce == "mass":
        ok = (total[:, None] > 0) & ((sizes[None] > 0) | (empty_regions == "zero"))
        return torch.where(ok, inside / total[:, None].clamp_min(1e-300), nan)
    return torch.where(sizes[None] > 0, inside / sizes[None].clamp_min(1), nan)


def merge_regions(
    regions: ArrayLike,
    groups: Mapping[str, Sequence[int | str]],
    names: Sequence[str],
) -> tuple[Tensor, list[str]]:
    """Relabel ``regions`` so that each group of labels becomes one region.

    Each group takes the place of its smallest member; the remaining labels keep their order and
    are renumbered compactly. Negative labels stay negative.

    Args:
        regions: ``[*S]`` integer labels in ``[0, len(names))``.
        groups: ``{new name: member labels}`` (ids or names), e.g.
            ``{"lungs": LUNG_LOBES}``; a label may be in one group only.
        names: the current region names (index = label id).

    Returns:
        ``(new labels [*S], new names)``.

    Example:
        >>> merged, new = merge_regions(torch.tensor([0, 1, 2, 3]), {"b+c": ["b", "c"]}, ["a", "b", "c", "d"])
        >>> merged.tolist(), new
        ([0, 1, 1, 2], ['a', 'b+c', 'd'])
    """
    lab = _as_tensor("regions", regions)
    names = list(names)
    owner: dict[int, str] = {}
    for group, members in groups.items():
        if not members:
            raise ValueError(f"Expected argument `groups` to have members for {group!r}, but it is empty")
        for m in members:
            idx = names.index(m) if isinstance(m, str) and m in names else m
            if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not 0 <= idx < len(names):
                raise ValueError(f"Expected argument `groups` to hold region ids in [0, {len(names)}) or names of `names`, but got {m!r} in {group!r}")
            if int(idx) in owner:
                raise ValueError(f"Expected argument `groups` to put each region in one group, but {names[idx]!r} is in {owner[int(idx)]!r} and {group!r}")
            owner[int(idx)] = group
    new_names: list[str] = []
    mapping = torch.empty(len(names), dtype=torch.long)
    seen: dict[str, int] = {}
    for old in range(len(names)):
        key = owner.get(old)
        if key is None:
            mapping[old] = len(new_names)
            new_names.append(names[old])
        elif key in seen:
            mapping[old] = seen[key]
        else:
            seen[key] = mapping[old] = len(new_names)
            new_names.append(key)
    if lab.numel() and int(lab.max()) >= len(names):
        raise ValueError(f"Expected argument `regions` to hold labels < len(names)={len(names)}, but found {int(lab.max())}")
    flat = lab.long()
    out = torch.where(flat >= 0, mapping.to(flat.device)[flat.clamp_min(0)], flat)
    return out, new_names


def mean_roi_over_scans(per_scan: ArrayLike | Sequence[ArrayLike]) -> Tensor:
    """NaN-aware mean of per-scan RoI importance tensors: ``[N, T, R]`` (or a list of ``[T, R]``) to ``[T, R]``.

    The tensor counterpart of :func:`agg2exp_lightning.analysis.importance.global_roi_importance`
    (which takes the ``[N, A, B]`` numpy shares of an explanation table), for scans explained here.

    Entries that are NaN on a scan (undefined there) are left out of that entry's mean; an entry
    NaN on every scan stays NaN (no warning).

    Example:
        >>> mean_roi_over_scans([torch.tensor([[0.2, 0.8]]), torch.tensor([[0.4, float("nan")]])])
        tensor([[0.3000, 0.8000]], dtype=torch.float64)
    """
    if isinstance(per_scan, (Tensor, np.ndarray)):
        stack = _as_tensor("per_scan", per_scan)
    else:
        items = [_as_tensor("per_scan", p).double().cpu() for p in per_scan]
        if not items:
            raise ValueError("Expected argument `per_scan` to hold at least one [T, R] table, but it is empty")
        if len({tuple(i.shape) for i in items}) != 1:
            raise ValueError(f"Expected argument `per_scan` tables of one shape, but got shapes {sorted({tuple(i.shape) for i in items})}")
        stack = torch.stack(items)
    if stack.dim() != 3 or stack.shape[0] == 0:
        raise ValueError(f"Expected argument `per_scan` of shape [N, T, R] with N >= 1, but got shape {tuple(stack.shape)}")
    stack = stack.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nanmean(stack, dim=0)

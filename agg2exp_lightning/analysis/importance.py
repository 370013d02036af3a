"""Global RoI importance: how a cohort's explanations spread over the predicted regions.

All functions take the ``[N, A, B]`` mass shares of an
:class:`~agg2exp_lightning.analysis.tables.ExplanationTable` (``e_{b->a}`` per scan) and ignore
NaN entries (a class the model did not predict on a scan has no shares there).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from agg2exp_lightning.utils.options import positive_int


def _check_mass(mass: np.ndarray) -> np.ndarray:
    mass = np.asarray(mass, dtype=float)
    if mass.ndim != 3:
        raise ValueError(f"Expected `mass` of shape [N, A, B], got shape {mass.shape}")
    return mass


def global_roi_importance(mass: np.ndarray) -> np.ndarray:
    """NaN-aware mean of the RoI mass shares over scans.

    Args:
        mass: ``[N, A, B]`` shares ``e_{b->a}``.

    Returns:
        ``[A, B]``: entry ``(a, b)`` is the mean over scans of the share of class ``a``'s
        attribution mass inside region ``b``; NaN where no scan has a value.

    Example:
        >>> global_roi_importance(np.array([[[0.2, 0.8]], [[0.4, np.nan]]]))
        array([[0.3, 0.8]])
    """
    mass = _check_mass(mass)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, on purpose
        return np.nanmean(mass, axis=0)


def own_region_index(classes: Sequence[str], regions: Sequence[str]) -> list[int | None]:
    """For each explained class, the index of its own region (``None`` if not among the regions)."""
    pos = {r: j for j, r in enumerate(regions)}
    return [pos.get(a) for a in classes]


def own_region_share(mass: np.ndarray, classes: Sequence[str], regions: Sequence[str]) -> np.ndarray:
    """``[N, A]`` share of each class's attribution inside its own predicted region.

    Raises:
        ValueError: a class has no region of its own name, or the names do not fit ``mass``.
    """
    mass = _check_mass(mass)
    if mass.shape[1:] != (len(classes), len(regions)):
        raise ValueError(f"Expected `mass` with {len(classes)} classes and {len(regions)} regions, got shape {mass.shape}")
    own = own_region_index(classes, regions)
    lacking = [a for a, j in zip(classes, own) if j is None]
    if lacking:
        raise ValueError(f"Expected every class in `regions`; classes without a region: {lacking}")
    return np.stack([mass[:, i, j] for i, j in enumerate(own)], axis=1)


def context_reliance(
    mass: np.ndarray,
    classes: Sequence[str],
    regions: Sequence[str],
    *,
    background: str = "background",
) -> pd.DataFrame:
    """Per class: how much of its explanation lies outside its own region.

    Args:
        mass: ``[N, A, B]`` shares.
        classes: explained class names (length ``A``).
        regions: region names (length ``B``).
        background: name of the background region.

    Returns:
        A frame indexed by class with columns ``own_share`` (mean share in its own region),
        ``context_reliance`` (``1 - own_share``), ``background_share`` (mean share in the
        background region, NaN if there is none), ``own_share_median``, ``own_share_q25``,
        ``own_share_q75`` and ``n_scans`` (scans with a value). Means are NaN-aware.
    """
    own = own_region_share(mass, classes, regions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        own_mean = np.nanmean(own, axis=0)
        q25, med, q75 = np.nanpercentile(own, [25, 50, 75], axis=0)
        if background in regions:
            bg = np.nanmean(mass[:, :, list(regions).index(background)], axis=0)
        else:
            bg = np.full(len(classes), np.nan)
    return pd.DataFrame(
        {
            "own_share": own_mean,
            "context_reliance": 1.0 - own_mean,
            "background_share": bg,
            "own_share_median": med,
            "own_share_q25": q25,
            "own_share_q75": q75,
            "n_scans": np.isfinite(own).sum(axis=0),
        },
        index=pd.Index(list(classes), name="class"),
    )


def strongest_dependencies(
    importance: np.ndarray,
    classes: Sequence[str],
    regions: Sequence[str],
    *,
    k: int = 12,
    exclude_regions: Sequence[str] = ("background",),
) -> pd.DataFrame:
    """The ``k`` largest region -> class dependencies, leaving out each class's own region.

    Args:
        importance: ``[A, B]`` global RoI importance.
        classes: explained class names.
        regions: region names.
        k: how many dependencies to return (fewer if fewer exist).
        exclude_regions: regions left out (background is reported by :func:`context_reliance`).

    Returns:
        Columns ``region``, ``class``, ``share`` (only shares > 0); sorted by ``share`` descending.
    """
    importance = np.asarray(importance, dtype=float)
    if importance.shape != (len(classes), len(regions)):
        raise ValueError(f"Expected `importance` of shape {(len(classes), len(regions))}, got {importance.shape}")
    positive_int("k", k)
    rows = [
        (b, a, float(importance[i, j]))
        for i, a in enumerate(classes)
        for j, b in enumerate(regions)
        if b != a and b not in exclude_regions and np.isfinite(importance[i, j]) and importance[i, j] > 0
    ]
    rows.sort(key=lambda r: -r[2])
    return pd.DataFrame(rows[:k], columns=["region", "class", "share"])

"""Region conventions of a cohort table: the share of an absent region, and merged regions.

- :func:`apply_empty_regions`: a region absent from a scan has no share (NaN, the corrected
  protocol) or share 0 counted in the cohort mean (the paper's aggregation writes 0: the summed
  attribution inside an empty mask is 0). Rows with no finite share at all (a class not predicted,
  an all-zero map) stay NaN under both conventions.
- :func:`merge_table_regions`: regions joined into one (e.g. the five lobes into ``lung``, the two
  autochthon muscles into ``autochthon``, as the authors' ``JOINED_CLASSES``). Mass shares add up
  exactly over disjoint regions, so merging a finished table equals aggregating over the merged mask;
  the mean ``|attribution|`` of a merged region needs the region sizes, which a table does not hold,
  so it is NaN there.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from agg2exp_lightning.analysis.tables import ExplanationTable
from agg2exp_lightning.labels import LUNG_LOBES
from agg2exp_lightning.utils import look_up_option

__all__ = ["PRESET_MERGES", "apply_empty_regions", "merge_table_regions", "parse_merge", "resolve_merges"]

#: Merges available by name alone (``--merge lung``), as the authors' ``JOINED_CLASSES``.
PRESET_MERGES: dict[str, tuple[str, ...]] = {
    "lung": LUNG_LOBES,
    "autochthon": ("autochthon_left", "autochthon_right"),
}


def apply_empty_regions(mass: np.ndarray, convention: Literal["nan", "zero"]) -> np.ndarray:
    """``[N, A, B]`` shares under a convention for regions absent from a scan.

    Args:
        mass: shares; NaN where a region had no voxel (or the whole row, for an all-zero map).
        convention: ``"nan"`` (unchanged) or ``"zero"`` (NaN entries of rows with some finite share -> 0).

    Returns:
        A new array.

    Example:
        >>> apply_empty_regions(np.array([[[0.4, np.nan]], [[np.nan, np.nan]]]), "zero").tolist()
        [[[0.4, 0.0]], [[nan, nan]]]
    """
    look_up_option("empty_regions", convention, ("nan", "zero"))
    mass = np.array(mass, dtype=float, copy=True)
    if convention == "zero":
        scored = np.isfinite(mass).any(axis=-1, keepdims=True)
        mass[np.isnan(mass) & scored] = 0.0
    return mass


def parse_merge(spec: str, regions: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``"lung"`` (a preset) or ``"name=a,b,c"`` -> ``(name, members)``, members checked against ``regions``.

    Raises:
        ValueError: an empty name or member list, or a member that is not a region (naming it, with
            the valid regions and the nearest spelling).
    """
    name, sep, rest = str(spec).partition("=")
    name = name.strip()
    if not sep:
        look_up_option("--merge (a preset, or NAME=REGION,REGION,...)", name, PRESET_MERGES)
        members = PRESET_MERGES[name]
    else:
        members = tuple(m.strip() for m in rest.split(",") if m.strip())
    if not name or len(members) < 1:
        raise ValueError(f"Expected --merge as NAME=REGION,REGION,... or one of {list(PRESET_MERGES)}, but got {spec!r}")
    for m in members:
        look_up_option(f"region in --merge {spec!r}", m, list(regions))
    return name, tuple(members)


def resolve_merges(merges: Sequence[str] | Mapping[str, Sequence[str]] | None, regions: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``{name: members}`` from ``--merge`` specs (``"lung"``, ``"name=a,b"``) or a mapping, checked against ``regions``.

    Raises:
        ValueError: see :func:`parse_merge`; also a name given twice.
    """
    if not merges:
        return {}
    if isinstance(merges, Mapping):
        items = [(str(k), tuple(v)) for k, v in merges.items()]
        for name, members in items:
            for m in members:
                look_up_option(f"region of merge {name!r}", m, list(regions))
    else:
        items = [parse_merge(spec, regions) for spec in merges]
    out: dict[str, tuple[str, ...]] = {}
    for name, members in items:
        if name in out:
            raise ValueError(f"Expected each --merge name once, but {name!r} is given twice")
        out[name] = members
    return out


def merge_table_regions(table: ExplanationTable, groups: Mapping[str, Sequence[str]]) -> ExplanationTable:
    """The table with each group of regions joined into one region (mass shares summed).

    A merged region takes the place of its first member (in region order); its share on a scan is the sum of its
    members' finite shares (NaN when none is finite); its mean is NaN (needs region sizes).

    Args:
        table: the cohort table.
        groups: ``{new name: member region names}``; a region in one group only.

    Raises:
        ValueError: a member that is not a region of the table (named, with the nearest one), a region
            in two groups, or a new name that is already another region's.
    """
    regions = list(table.regions)
    owner: dict[str, str] = {}
    for name, members in groups.items():
        for m in members:
            look_up_option(f"region of merge {name!r}", m, regions)
            if m in owner and owner[m] != name:
                raise ValueError(f"Expected each region in one merge, but {m!r} is in {owner[m]!r} and {name!r}")
            owner[m] = name
        if name in regions and name not in members:
            raise ValueError(f"Expected merge name {name!r} not to be another region's name; regions: {regions}")
    new_names: list[str] = []  # a group takes the place of its first member in region order
    for b in regions:
        key = owner.get(b, b)
        if key not in new_names:
            new_names.append(key)
    mapping = np.array([new_names.index(owner.get(b, b)) for b in regions])
    n, a, _ = table.mass.shape
    mass = np.full((n, a, len(new_names)), np.nan)
    mean = None if table.mean is None else np.full((n, a, len(new_names)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k in range(len(new_names)):
            cols = np.flatnonzero(mapping == k)
            part = table.mass[..., cols]
            any_finite = np.isfinite(part).any(axis=-1)
            mass[..., k] = np.where(any_finite, np.nansum(part, axis=-1), np.nan)
            if mean is not None and len(cols) == 1:
                mean[..., k] = table.mean[..., cols[0]]
    return dataclasses.replace(table, regions=tuple(new_names), mass=mass, mean=mean)

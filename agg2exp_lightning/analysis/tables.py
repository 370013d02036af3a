"""Tables of aggregated explanations in the published Agg2Exp column format.

One row per scan. The columns, for explained class ``a`` and region ``b`` (both label names):

- ``{a}_explanation_in_{b}_mass``: share of the L1 attribution mass of class ``a`` inside the
  predicted region ``b`` (for each ``a`` the shares over ``b`` sum to 1);
- ``{a}_explanation_in_{b}_mean``: mean ``|attribution|`` of class ``a`` over region ``b``;
- ``{a}_dice`` and, optionally, ``{a}_iou``: segmentation quality of class ``a``;
- ``{a}_explanation_var`` / ``{a}_explanation_mean`` (optional): statistics of the attribution map;
- an id column, ``patient`` (the published name) or ``image_id``;
- anything else is metadata (scanner, age, ...).

The published file spells ``vertebrae`` as ``vertebraes``. Both spellings are read and mapped to
this project's label names; :func:`to_published_frame` writes the published spelling back, so a
``per_scan.csv`` compares column for column with the paper's file.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.labels import THORAX_CLASSES

log = logging.getLogger(__name__)

#: Other spellings of our label names found in published tables.
LABEL_ALIASES: dict[str, str] = {"vertebraes": "vertebrae"}
#: How the published file spells our label names (the inverse of :data:`LABEL_ALIASES`).
PUBLISHED_SPELLING: dict[str, str] = {ours: theirs for theirs, ours in LABEL_ALIASES.items()}
#: Accepted id columns, in order of preference.
ID_COLUMNS: tuple[str, ...] = ("patient", "image_id")

#: Strings read as a missing number in numeric columns.
_MISSING_TOKENS = frozenset({"", "nan", "na", "n/a", "none", "null"})
_PER_CLASS = ("dice", "iou", "explanation_var", "explanation_mean")


@dataclass(frozen=True)
class ExplanationTable:
    """Aggregated explanations of a cohort, as arrays.

    Attributes:
        ids: scan ids, one per row.
        classes: explained classes ``a`` (our label names, label-id order).
        regions: regions ``b`` (our label names, label-id order).
        mass: ``[N, A, B]`` L1 mass shares; NaN where the table has no value.
        mean: ``[N, A, B]`` mean |attribution| per region, or ``None`` if the table has none.
        dice: ``[N, A]`` Dice per explained class (NaN where missing), or ``None``.
        iou: ``[N, A]`` IoU per explained class, or ``None``.
        stats: other per-class columns (``{a}_explanation_var``/``_mean``), our spelling, index = ids.
        metadata: metadata columns, index = ids (may have no columns).
        evidence: evidence families beside the shares, family -> ``[N, A, F]`` raw features (NaN where
            not computable; :mod:`~agg2exp_lightning.analysis.evidence`); empty for tables of shares only.
    """

    ids: tuple[str, ...]
    classes: tuple[str, ...]
    regions: tuple[str, ...]
    mass: np.ndarray
    mean: np.ndarray | None = None
    dice: np.ndarray | None = None
    iou: np.ndarray | None = None
    stats: pd.DataFrame = field(default_factory=pd.DataFrame)
    metadata: pd.DataFrame = field(default_factory=pd.DataFrame)
    evidence: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, a, b = len(self.ids), len(self.classes), len(self.regions)
        for fam, arr in self.evidence.items():
            if arr.ndim != 3 or arr.shape[:2] != (n, a):
                raise ValueError(f"Expected evidence family {fam!r} of shape [{n}, {a}, F], got {arr.shape}")
        if self.mass.shape != (n, a, b):
            raise ValueError(f"Expected `mass` of shape {(n, a, b)}, got {self.mass.shape}")
        if self.mean is not None and self.mean.shape != (n, a, b):
            raise ValueError(f"Expected `mean` of shape {(n, a, b)}, got {self.mean.shape}")
        for name in ("dice", "iou"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != (n, a):
                raise ValueError(f"Expected `{name}` of shape {(n, a)}, got {arr.shape}")
        if len(set(self.ids)) != n:
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})
            raise DataError(f"scan ids must be unique, found duplicates {dup[:5]}")

    def __len__(self) -> int:
        return len(self.ids)


def _spellings(classes: Sequence[str]) -> list[tuple[str, str]]:
    """(spelling, canonical) pairs, longest spelling first so prefixes match greedily."""
    pairs = [(c, c) for c in classes]
    pairs += [(alias, ours) for alias, ours in LABEL_ALIASES.items() if ours in classes]
    return sorted(pairs, key=lambda p: -len(p[0]))


def _parse_column(col: str, spellings: list[tuple[str, str]]) -> tuple[str, str, str | None] | None:
    """Parse a column into ``(kind, class, region)``; ``None`` if it is not a per-class column."""
    for spelled_a, a in spellings:
        if not col.startswith(spelled_a + "_"):
            continue
        rest = col[len(spelled_a) + 1:]
        if rest in _PER_CLASS:
            return rest, a, None
        m = re.fullmatch(r"explanation_in_(.+)_(mass|mean)", rest)
        if m:
            for spelled_b, b in spellings:
                if m.group(1) == spelled_b:
                    return m.group(2), a, b
    return None


def parse_explanation_table(
    frame: pd.DataFrame,
    classes: Sequence[str] = THORAX_CLASSES,
    *,
    source: str = "table",
) -> ExplanationTable:
    """Turn a frame in the published column format into an :class:`ExplanationTable`.

    Explained classes are those with at least one ``_mass`` column; every one of them must have a
    mass column for every region found (the error names the missing columns). Columns that parse
    as neither per-class columns nor the id column are metadata.

    Args:
        frame: one row per scan.
        classes: known label names (our spelling); aliases in :data:`LABEL_ALIASES` are accepted.
        source: name of the table for error messages (e.g. the file path).

    Returns:
        The parsed table; classes and regions in the order of ``classes``.

    Raises:
        DataError: no id column, duplicate or empty ids, no mass columns, missing mass columns, a Dice
            (or IoU) column missing for some explained class while others have one,
            non-numeric values in numeric columns, or one column present under two spellings.

    Example:
        >>> df = pd.DataFrame({"patient": ["s1"], "aorta_explanation_in_aorta_mass": [1.0]})
        >>> parse_explanation_table(df).mass.shape
        (1, 1, 1)
    """
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"Expected `frame` to be a pandas DataFrame, got {type(frame).__name__}")
    id_col = next((c for c in ID_COLUMNS if c in frame.columns), None)
    if id_col is None:
        raise DataError(f"{source}: expected an id column named one of {list(ID_COLUMNS)}, got columns {list(frame.columns)[:8]}...")
    ids_raw = frame[id_col]
    if ids_raw.isna().any() or (ids_raw.astype(str).str.strip() == "").any():
        raise DataError(f"{source}: id column {id_col!r} has empty values")
    ids = tuple(ids_raw.astype(str).str.strip())

    spellings = _spellings(classes)
    parsed: dict[tuple[str, str, str | None], str] = {}
    meta_cols: list[str] = []
    for col in frame.columns:
        if col == id_col:
            continue
        key = _parse_column(str(col), spellings)
        if key is None:
            meta_cols.append(col)
        elif key in parsed:
            raise DataError(f"{source}: columns {parsed[key]!r} and {col!r} hold the same quantity under two spellings")
        else:
            parsed[key] = col

    order = {c: i for i, c in enumerate(classes)}
    expl = sorted({a for (k, a, _b) in parsed if k == "mass"}, key=order.__getitem__)
    regs = sorted({b for (k, _a, b) in parsed if k == "mass"}, key=order.__getitem__)
    if not expl:
        raise DataError(
            f"{source}: no columns named '{{class}}_explanation_in_{{region}}_mass' for known classes "
            f"{list(classes)[:3]}...; is this a table of aggregated explanations?"
        )

    def numeric(col: str) -> np.ndarray:
        values = pd.to_numeric(frame[col], errors="coerce")
        raw = frame[col]
        bad = values.isna() & raw.notna() & ~raw.astype(str).str.strip().str.lower().isin(_MISSING_TOKENS)
        if bad.any():
            raise DataError(f"{source}: column {col!r} must be numeric, got {frame[col][bad].iloc[0]!r} in row {int(np.argmax(bad.to_numpy()))}")
        return values.to_numpy(dtype=float)

    def cube(kind: str) -> np.ndarray | None:
        present = [(a, b) for a in expl for b in regs if (kind, a, b) in parsed]
        if not present and kind != "mass":
            return None
        missing = [f"{a}_explanation_in_{b}_{kind}" for a in expl for b in regs if (kind, a, b) not in parsed]
        if missing:
            raise DataError(f"{source}: missing {len(missing)} '{kind}' column(s): {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        out = np.empty((len(ids), len(expl), len(regs)))
        for i, a in enumerate(expl):
            for j, b in enumerate(regs):
                out[:, i, j] = numeric(parsed[(kind, a, b)])
        return out

    def per_class(kind: str) -> np.ndarray | None:
        if not any((kind, a, None) in parsed for a in expl):
            return None
        missing = [f"{a}_{kind}" for a in expl if (kind, a, None) not in parsed]
        if missing:  # a dropped column would silently leave its class out of every test that uses it
            raise DataError(f"{source}: missing {len(missing)} '{kind}' column(s) for explained classes: {missing[:6]}"
                            f"{' ...' if len(missing) > 6 else ''} (a table with {kind.capitalize() if kind == 'dice' else 'IoU'} "
                            "columns needs one per explained class; leave its cells empty where unknown)")
        return np.stack([numeric(parsed[(kind, a, None)]) if (kind, a, None) in parsed else np.full(len(ids), np.nan) for a in expl], axis=1)

    stats = pd.DataFrame(
        {f"{a}_{k}": numeric(col) for (k, a, b), col in parsed.items() if k.startswith("explanation_")},
        index=pd.Index(ids, name="id"),
    )
    metadata = frame[meta_cols].copy()
    metadata.index = pd.Index(ids, name="id")
    mass = cube("mass")
    if mass is not None and np.isinf(mass).any():
        raise DataError(f"{source}: mass shares must be finite or empty, found infinities")
    return ExplanationTable(
        ids=ids, classes=tuple(expl), regions=tuple(regs), mass=mass, mean=cube("mean"),
        dice=per_class("dice"), iou=per_class("iou"), stats=stats, metadata=metadata,
    )


def read_table_file(path: str | Path) -> pd.DataFrame:
    """Read a CSV/TSV file, sniffing the separator and dropping a UTF-8 byte-order mark.

    Raises:
        DataError: the file does not exist or cannot be parsed.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"table file {p} does not exist")
    try:
        # dtype=object keeps metadata as written; numeric columns are converted by the parser.
        return pd.read_csv(p, sep=None, engine="python", encoding="utf-8-sig", dtype=object, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"table file {p} could not be parsed: {err}") from err


def read_explanation_table(
    path: str | Path,
    classes: Sequence[str] = THORAX_CLASSES,
    *,
    metadata: str | Path | pd.DataFrame | None = None,
) -> ExplanationTable:
    """Read a table of aggregated explanations, optionally joining a metadata file on the id.

    Args:
        path: CSV/TSV in the published column format.
        classes: known label names.
        metadata: a file or frame with an id column (``patient`` or ``image_id``), e.g.
            TotalSegmentator's ``meta.csv``; joined on the id. Scans without a metadata row get
            empty values (logged); metadata rows for other scans are ignored.

    Returns:
        The parsed table.

    Raises:
        DataError: see :func:`parse_explanation_table`; a metadata file without an id column.
    """
    table = parse_explanation_table(read_table_file(path), classes, source=str(path))
    if metadata is None:
        return table
    meta = metadata if isinstance(metadata, pd.DataFrame) else read_table_file(metadata)
    id_col = next((c for c in ID_COLUMNS if c in meta.columns), None)
    if id_col is None:
        raise DataError(f"metadata {metadata if not isinstance(metadata, pd.DataFrame) else 'frame'}: expected an id column named one of {list(ID_COLUMNS)}")
    meta = meta.assign(**{id_col: meta[id_col].astype(str).str.strip()}).drop_duplicates(id_col).set_index(id_col)
    missing = [i for i in table.ids if i not in meta.index]
    if missing:
        log.warning("metadata has no row for %d of %d scans (e.g. %s); their metadata is empty", len(missing), len(table), missing[:3])
    joined = meta.reindex(list(table.ids))
    joined.index.name = "id"
    overlap = [c for c in joined.columns if c in table.metadata.columns]
    combined = pd.concat([table.metadata.drop(columns=overlap), joined], axis=1)
    return dataclasses.replace(table, metadata=combined)


def column_name(a: str, b: str | None, kind: Literal["mass", "mean", "dice", "iou", "explanation_var", "explanation_mean"], *, published: bool = True) -> str:
    """The published column name for class ``a`` (and region ``b`` for ``mass``/``mean``)."""
    spell = (lambda n: PUBLISHED_SPELLING.get(n, n)) if published else (lambda n: n)
    if kind in ("mass", "mean"):
        if b is None:
            raise ValueError(f"Expected a region `b` for kind {kind!r}")
        return f"{spell(a)}_explanation_in_{spell(b)}_{kind}"
    return f"{spell(a)}_{kind}"


def to_published_frame(table: ExplanationTable, extra: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Write a table back in the published column format and spelling (``patient`` first).

    Column order follows the published file: per class ``a``, its mass/mean pairs over regions,
    then its attribution statistics; then IoU and Dice per class; then ``extra`` columns (e.g.
    anomaly scores); then metadata.
    """
    cols: dict[str, np.ndarray] = {"patient": np.asarray(table.ids, dtype=object)}
    for i, a in enumerate(table.classes):
        for j, b in enumerate(table.regions):
            cols[column_name(a, b, "mass")] = table.mass[:, i, j]
            if table.mean is not None:
                cols[column_name(a, b, "mean")] = table.mean[:, i, j]
        for k in ("explanation_var", "explanation_mean"):
            if f"{a}_{k}" in table.stats.columns:
                cols[column_name(a, None, k)] = table.stats[f"{a}_{k}"].to_numpy()
    for kind in ("iou", "dice"):
        arr = getattr(table, kind)
        if arr is not None:
            for i, a in enumerate(table.classes):
                cols[column_name(a, None, kind)] = arr[:, i]
    cols.update(extra or {})
    out = pd.DataFrame(cols)
    meta = table.metadata.reset_index(drop=True)
    meta = meta[[c for c in meta.columns if c not in out.columns]]
    return pd.concat([out, meta], axis=1)

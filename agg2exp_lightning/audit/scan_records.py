"""One scan's audit result as a JSON record, and records back into the published table format.

A record (``scans/<id>.json``) holds::

    {"id": str, "classes": [str], "regions": [str],
     "mass": [[float|null]] (T x R), "mean": [[float|null]] (T x R),
     "dice": [float|null] (T) | null, "iou": [float|null] (T) | null}

A failed scan is written as ``scans/<id>.failed.json`` = ``{"id": str, "error": str}``.
Optional slices for the anomaly-case figures go to ``scans/<id>.slices.npz``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agg2exp_lightning.analysis.tables import ExplanationTable, column_name, parse_explanation_table
from agg2exp_lightning.errors import DataError

#: Longest side of a stored slice; larger slices are subsampled by an integer stride.
MAX_SLICE_SIDE = 160


def record_stem(scan_id: str) -> str:
    """A file-name-safe stem for a scan id (ids with other characters get a short hash suffix)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", scan_id)
    if safe == scan_id and not scan_id.startswith("."):
        return scan_id
    return f"{safe.lstrip('.')}-{hashlib.sha256(scan_id.encode()).hexdigest()[:8]}"


def _list(a: Any) -> Any:
    arr = np.asarray(a, dtype=float)
    return [_list(x) for x in arr] if arr.ndim > 1 else [None if not math.isfinite(v) else float(v) for v in arr]


def scan_record(
    scan_id: str,
    classes: Sequence[str],
    regions: Sequence[str],
    mass: Any,
    mean: Any,
    dice: Any | None = None,
) -> dict[str, Any]:
    """Build a scan's record (see the module docstring); NaN becomes ``null``.

    Args:
        scan_id: the scan id.
        classes: the ``T`` explained class names.
        regions: the ``R`` region names.
        mass: ``[T, R]`` mass shares (array-like or tensor).
        mean: ``[T, R]`` mean |attribution| per region.
        dice: ``[T]`` Dice per explained class, or ``None`` without labels.

    Raises:
        ValueError: shapes do not fit the names.
    """
    mass_a = np.asarray(mass.detach().cpu() if hasattr(mass, "detach") else mass, dtype=float)
    mean_a = np.asarray(mean.detach().cpu() if hasattr(mean, "detach") else mean, dtype=float)
    for name, arr in (("mass", mass_a), ("mean", mean_a)):
        if arr.shape != (len(classes), len(regions)):
            raise ValueError(f"Expected `{name}` of shape {(len(classes), len(regions))} for scan {scan_id!r}, got {arr.shape}")
    record: dict[str, Any] = {"id": str(scan_id), "classes": list(classes), "regions": list(regions),
                              "mass": _list(mass_a), "mean": _list(mean_a), "dice": None}
    if dice is not None:
        d = np.asarray(dice.detach().cpu() if hasattr(dice, "detach") else dice, dtype=float).reshape(-1)
        if d.shape != (len(classes),):
            raise ValueError(f"Expected `dice` of length {len(classes)} for scan {scan_id!r}, got {d.shape}")
        record["dice"] = _list(d)
    return record


def records_to_frame(records: Sequence[Mapping[str, Any]], metadata: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Scan records as one frame in the published column format (+ metadata columns).

    Raises:
        DataError: records disagree on classes or regions, or there are none.
    """
    if not records:
        raise DataError("no finished scan to audit")
    classes, regions = records[0]["classes"], records[0]["regions"]
    rows = []
    for rec in records:
        if rec["classes"] != classes or rec["regions"] != regions:
            raise DataError(f"scan {rec['id']!r} was explained for other classes/regions than scan {records[0]['id']!r}")
        row: dict[str, Any] = {"patient": rec["id"]}
        for i, a in enumerate(classes):
            for j, b in enumerate(regions):
                row[column_name(a, b, "mass")] = rec["mass"][i][j]
                row[column_name(a, b, "mean")] = rec["mean"][i][j]
        if rec.get("dice") is not None:
            row.update({column_name(a, None, "dice"): rec["dice"][i] for i, a in enumerate(classes)})
        row.update(dict((metadata or {}).get(rec["id"], {})))
        rows.append(row)
    return pd.DataFrame(rows).astype({c: float for c in rows[0] if c.endswith(("_mass", "_mean", "_dice"))})


def load_records(folder: Path, ids: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Finished records (in ``ids`` order) and failures ``id -> error`` from a scans folder."""
    done, failed = [], {}
    for sid in ids:
        ok, bad = folder / f"{record_stem(sid)}.json", folder / f"{record_stem(sid)}.failed.json"
        if ok.is_file():
            done.append(json.loads(ok.read_text()))
        elif bad.is_file():
            failed[sid] = json.loads(bad.read_text()).get("error", "unknown error")
    return done, failed


def records_to_table(records: Sequence[Mapping[str, Any]], metadata: Mapping[str, Mapping[str, Any]] | None = None, *, source: str) -> ExplanationTable:
    """:func:`records_to_frame` parsed into an :class:`ExplanationTable` (our label names)."""
    return parse_explanation_table(records_to_frame(records, metadata), records[0]["classes"], source=source)


def _stride(shape: Sequence[int]) -> int:
    return max(1, math.ceil(max(shape) / MAX_SLICE_SIDE))


def slice_bundle(image: np.ndarray, prediction: np.ndarray, attribution: np.ndarray) -> bytes:
    """Per class, the axial slice with the most attribution mass: image, labels, |attribution|.

    Args:
        image: ``[H, W, D]`` intensities.
        prediction: ``[H, W, D]`` integer labels.
        attribution: ``[T, H, W, D]`` attributions, one map per explained class.

    Returns:
        ``.npz`` bytes with ``index [T]``, ``image [T, h, w]`` (float16), ``prediction [T, h, w]``
        (uint8) and ``attribution [T, h, w]`` (float16), subsampled to at most
        :data:`MAX_SLICE_SIDE` per side.
    """
    if image.shape != prediction.shape or attribution.shape[1:] != image.shape or image.ndim != 3:
        raise ValueError(f"Expected image/prediction [H, W, D] and attribution [T, H, W, D], got {image.shape}, {prediction.shape}, {attribution.shape}")
    mag = np.abs(attribution.astype(np.float32))
    index = mag.sum(axis=(1, 2)).argmax(axis=1)
    s = _stride(image.shape[:2])
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        index=index,
        image=np.stack([image[::s, ::s, k] for k in index]).astype(np.float16),
        prediction=np.stack([prediction[::s, ::s, k] for k in index]).astype(np.uint8),
        attribution=np.stack([mag[t, ::s, ::s, k] for t, k in enumerate(index)]).astype(np.float16),
    )
    return buf.getvalue()

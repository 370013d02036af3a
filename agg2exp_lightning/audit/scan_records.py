"""One scan's audit result as a JSON record, and records back into the published table format.

A record (``scans/<id>.json``) holds::

    {"id": str, "classes": [str], "regions": [str],
     "mass": [[float|null]] (T x R), "mean": [[float|null]] (T x R),
     "dice": [float|null] (T) | null, "iou": [float|null] (T) | null,
     "evidence": {"prediction": {"volume_ml": [T], "components": [T], "confidence": [T], "entropy": [T]},
                  "attribution": {"mass": [T], "outside_body": [T]}}}   # optional; null: not computable

Records written before the evidence families existed have no ``evidence``: those families are then left
out for the scan (and named in its row), never read as zeros.

A failed scan is written as ``scans/<id>.failed.json`` = ``{"id": str, "error": str}``.
Optional slices for the anomaly-case figures go to ``scans/<id>.slices.npz``.

Everything here is read back as plain JSON or as ``.npz`` without pickles (``allow_pickle=False``),
and checked before use: a record that is truncated, tampered with or of another scan is reported and
its scan explained again, never trusted and never unpickled.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agg2exp_lightning.analysis.tables import ExplanationTable, column_name, parse_explanation_table
from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)

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
    evidence: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> dict[str, Any]:
    """Build a scan's record (see the module docstring); NaN becomes ``null``.

    Args:
        scan_id: the scan id.
        classes: the ``T`` explained class names.
        regions: the ``R`` region names.
        mass: ``[T, R]`` mass shares (array-like or tensor).
        mean: ``[T, R]`` mean |attribution| per region.
        dice: ``[T]`` Dice per explained class, or ``None`` without labels.
        evidence: ``{family: {feature: [T]}}`` (:mod:`~agg2exp_lightning.analysis.evidence`), or ``None``.

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
    if evidence is not None:
        record["evidence"] = {fam: {k: _list(np.asarray(v, dtype=float).reshape(-1)) for k, v in feats.items()}
                              for fam, feats in evidence.items()}
        for fam, feats in record["evidence"].items():
            if any(len(v) != len(classes) for v in feats.values()):
                raise ValueError(f"Expected every {fam} evidence feature to have {len(classes)} values for scan {scan_id!r}")
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
    frame = pd.DataFrame(rows)  # scans without labels (no Dice) get NaN in the Dice columns of those with
    return frame.astype({c: float for c in frame.columns if c.endswith(("_mass", "_mean", "_dice"))})


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON ({type(err).__name__}: {err})") from err


def _is_matrix(value: Any, rows: int, cols: int) -> bool:
    return isinstance(value, list) and len(value) == rows and all(_is_vector(row, cols) for row in value)


def _is_vector(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)


def read_record(path: str | Path, scan_id: str) -> dict[str, Any]:
    """Read and check the record of scan ``scan_id`` (see the module docstring).

    Raises:
        DataError: the file is unreadable, not JSON, or not a well-formed record of ``scan_id``.
    """
    path = Path(path)
    rec = _read_json(path)
    expected = "a JSON object with 'id', 'classes', 'regions', 'mass' [T x R], 'mean' [T x R] and 'dice' [T] or null"
    if not isinstance(rec, dict) or not {"id", "classes", "regions", "mass", "mean"} <= set(rec):
        raise DataError(f"{path}: expected {expected}, got {type(rec).__name__} with keys {sorted(rec) if isinstance(rec, dict) else []}")
    if rec["id"] != scan_id:
        raise DataError(f"{path}: expected the record of scan {scan_id!r}, got one of {rec['id']!r}")
    classes, regions = rec["classes"], rec["regions"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and isinstance(regions, list) and regions and all(isinstance(r, str) for r in regions)):
        raise DataError(f"{path}: expected 'classes' and 'regions' to be non-empty lists of names")
    t, r = len(classes), len(regions)
    if not (_is_matrix(rec["mass"], t, r) and _is_matrix(rec["mean"], t, r)) or not (rec.get("dice") is None or _is_vector(rec["dice"], t)):
        raise DataError(f"{path}: expected {expected} with T={t} classes and R={r} regions of numbers or null")
    ev = rec.get("evidence")
    if ev is not None and not (isinstance(ev, dict) and all(isinstance(f, dict) and all(_is_vector(v, t) for v in f.values())
                                                             for f in ev.values())):
        raise DataError(f"{path}: expected 'evidence' to map families to {{feature: [T={t} numbers or null]}}")
    return rec


def read_failure(path: str | Path) -> str:
    """The error message stored in a scan's ``.failed.json`` (a readable note if the file is damaged)."""
    try:
        rec = _read_json(Path(path))
    except DataError as err:
        return f"unknown error ({err})"
    return str(rec.get("error", "unknown error")) if isinstance(rec, dict) else f"unknown error ({path} holds no JSON object)"


def read_slices(path: str | Path) -> dict[str, np.ndarray] | None:
    """The slice bundle of a scan (see :func:`slice_bundle`), or ``None`` when it was not stored.

    Raises:
        DataError: the file is not a readable ``.npz`` of the expected numeric arrays (object arrays,
            which would need unpickling, are refused).
    """
    path = Path(path)
    if not path.is_file():
        return None
    expected = {"index": 1, "image": 3, "prediction": 3, "attribution": 3}
    try:
        with np.load(path, allow_pickle=False) as data:
            bundle = {k: data[k] for k in data.files}
    except Exception as err:  # zipfile, numpy and OS errors alike: the file is not what we wrote
        raise DataError(f"{path} is not a readable slice bundle ({type(err).__name__}: {err})") from err
    shapes = {k: getattr(bundle.get(k), "shape", None) for k in expected}
    if set(bundle) != set(expected) or any(len(shapes[k]) != n for k, n in expected.items()) or any(
            bundle[k].dtype.kind not in "iuf" for k in expected) or len({shapes[k][0] for k in expected}) != 1:
        raise DataError(f"{path}: expected numeric arrays {sorted(expected)} with one slice per class, got "
                        f"{ {k: (str(v.dtype), v.shape) for k, v in bundle.items()} }")
    return bundle


def load_records(folder: Path, ids: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Finished records (in ``ids`` order) and failures ``id -> error`` from a scans folder.

    A record that does not pass :func:`read_record` counts as a failure of its scan (with the reason).
    """
    done, failed = [], {}
    for sid in ids:
        ok, bad = folder / f"{record_stem(sid)}.json", folder / f"{record_stem(sid)}.failed.json"
        if ok.is_file():
            try:
                done.append(read_record(ok, sid))
            except DataError as err:
                failed[sid] = str(err)
        elif bad.is_file():
            failed[sid] = read_failure(bad)
    return done, failed


def is_finished(folder: Path, scan_id: str) -> bool:
    """Whether ``folder`` holds a sound record of ``scan_id`` (and, if stored, sound slices); a damaged
    one is reported (and will be written again when the scan is explained again)."""
    stem = record_stem(scan_id)
    if not (folder / f"{stem}.json").is_file():
        return False
    try:
        read_record(folder / f"{stem}.json", scan_id)
        read_slices(folder / f"{stem}.slices.npz")
    except DataError as err:
        log.warning("%s; scan %s is explained again", err, scan_id)
        return False
    return True


def records_to_table(records: Sequence[Mapping[str, Any]], metadata: Mapping[str, Mapping[str, Any]] | None = None, *, source: str) -> ExplanationTable:
    """:func:`records_to_frame` parsed into an :class:`ExplanationTable` (our label names).

    Every region is a known name, also one that is not an explained class (its columns would
    otherwise be taken for metadata).
    """
    names = list(dict.fromkeys([*records[0]["regions"], *records[0]["classes"]])) if records else []
    table = parse_explanation_table(records_to_frame(records, metadata), names, source=source)
    return with_record_evidence(table, {rec["id"]: rec for rec in records})


def with_record_evidence(table: ExplanationTable, records: Mapping[str, Mapping[str, Any]]) -> ExplanationTable:
    """``table`` with the evidence families of its scans' records (``id -> record``; NaN where a scan has no record
    or its record no evidence).

    Classes are matched by name: the table orders them by label id, a record in its own order.
    """
    import dataclasses

    from agg2exp_lightning.analysis.evidence import FAMILIES, family_matrix

    evidence = {}
    for fam in FAMILIES:
        rows = []
        for sid in table.ids:
            rec = records.get(sid)
            if rec is None:  # no record of this scan: not computable
                rows.append(family_matrix(None, fam, len(table.classes)))
                continue
            m = family_matrix((rec.get("evidence") or {}).get(fam), fam, len(rec["classes"]))
            rows.append(m[[rec["classes"].index(c) for c in table.classes]])
        evidence[fam] = np.stack(rows) if rows else np.empty((0, len(table.classes), len(FAMILIES[fam])))
    return dataclasses.replace(table, evidence=evidence)


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

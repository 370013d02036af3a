"""Subject records from a TotalSegmentator root or a plain manifest, and their splits."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agg2exp_lightning.data.totalsegmentator import (
    list_subject_dirs,
    read_meta_csv,
    warn_missing_meta,
)
from agg2exp_lightning.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SubjectRecord:
    """Where one subject's image and labels are, and what is known about it.

    Attributes:
        subject_id: e.g. ``s0001``.
        image: path of the CT (HU) NIfTI.
        labels: path of a multi-label NIfTI (manifest) or of the subject folder (TotalSegmentator layout,
            structures merged on load); ``None`` when there are no labels.
        layout: ``"totalsegmentator"`` or ``"manifest"``.
        split: ``train``, ``val``, ``test`` or another string from the metadata.
        metadata: all metadata columns as strings.
    """

    subject_id: str
    image: str
    labels: str | None
    layout: Literal["totalsegmentator", "manifest"]
    split: str
    metadata: dict[str, str] = field(default_factory=dict)


def _hash_split(subject_id: str, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> str:
    """A split assigned deterministically from the id alone (for data without a split column)."""
    u = int(hashlib.sha256(subject_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edges = [sum(fractions[: i + 1]) / sum(fractions) for i in range(len(fractions))]
    return next(s for s, e in zip(SPLITS, edges) if u <= e)


def totalsegmentator_records(root: str | Path) -> list[SubjectRecord]:
    """One record per subject folder under a TotalSegmentator v2 root.

    Metadata and splits come from ``meta.csv``; without it a warning is given and splits are assigned
    from a hash of the subject id (70/15/15). Subjects listed in ``meta.csv`` without a folder are
    ignored (TotalSegmentator ships subsets); folders missing from ``meta.csv`` get empty metadata.

    Raises:
        DataError: the root is missing or holds no subject folder; ``meta.csv`` is malformed.
    """
    root = Path(root)
    dirs = list_subject_dirs(root)
    if not dirs:
        raise DataError(f"dataset root {root} holds no subject folder (expected sXXXX/ct.nii.gz)")
    meta = None
    if (root / "meta.csv").exists():
        meta = read_meta_csv(root / "meta.csv")
    else:
        warn_missing_meta(root)
    records = []
    for d in dirs:
        row = meta.loc[d.name].to_dict() if meta is not None and d.name in meta.index else {"image_id": d.name}
        split = row.get("split") or _hash_split(d.name)
        records.append(
            SubjectRecord(d.name, str(d / "ct.nii.gz"), str(d), "totalsegmentator", split, {k: str(v) for k, v in row.items()})
        )
    return records


def manifest_records(path: str | Path) -> list[SubjectRecord]:
    """Records from a CSV manifest with columns ``image``, ``label`` (optional) and metadata columns.

    Relative paths are taken from the manifest's folder. ``image_id`` (default: the image file name
    without extension) and ``split`` (default: from a hash of the id) are optional columns.

    Raises:
        DataError: the manifest is missing, lacks an ``image`` column, or is empty.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"manifest {p} does not exist")
    try:
        table = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8-sig", sep=None, engine="python")
    except Exception as err:
        raise DataError(f"manifest {p}: cannot parse as CSV ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    if "image" not in table.columns:
        raise DataError(f"manifest {p}: expected columns 'image' and 'label' (plus metadata), found {list(table.columns)}")
    if table.empty:
        raise DataError(f"manifest {p} lists no subject")
    records = []
    for _, row in table.iterrows():
        meta = {k: str(v).strip() for k, v in row.items()}
        image = (p.parent / meta["image"]).resolve()
        label = (p.parent / meta["label"]).resolve() if meta.get("label") else None
        sid = meta.get("image_id") or image.name.split(".")[0]
        meta["image_id"] = sid
        records.append(
            SubjectRecord(sid, str(image), str(label) if label else None, "manifest", meta.get("split") or _hash_split(sid), meta)
        )
    ids = [r.subject_id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"manifest {p}: subject ids repeat; give an image_id column with unique values")
    return records


def discover_records(source: str | Path) -> list[SubjectRecord]:
    """Records from a TotalSegmentator root (a folder) or a manifest (a ``.csv`` file)."""
    s = Path(source)
    if s.is_file() and s.suffix.lower() in (".csv", ".tsv"):
        return manifest_records(s)
    return totalsegmentator_records(s)


def select_split(records: Sequence[SubjectRecord], split: str, *, source: str | Path = "dataset") -> list[SubjectRecord]:
    """Records of one split; DataError if there are none (naming the splits that exist)."""
    chosen = [r for r in records if r.split == split]
    if not chosen:
        found = sorted({r.split for r in records})
        raise DataError(f"{source}: split {split!r} is empty; splits present: {found}")
    return chosen

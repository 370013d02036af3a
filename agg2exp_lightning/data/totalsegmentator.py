"""TotalSegmentator v2 layout: ``meta.csv`` and per-structure masks merged into the thorax labels.

A dataset root holds one folder per subject (``s0000/``) with ``ct.nii.gz`` in Hounsfield units and
``segmentations/<structure>.nii.gz`` (one binary mask per structure), plus ``meta.csv``
(semicolon-separated, possibly starting with a UTF-8 BOM).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from agg2exp_lightning.data.nifti import check_binary, check_ct, check_same_grid, load_nifti
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.labels import THORAX_CLASSES
from agg2exp_lightning.utils.options import did_you_mean, nearest

log = logging.getLogger(__name__)

META_COLUMNS: tuple[str, ...] = (
    "image_id",
    "age",
    "gender",
    "institute",
    "study_type",
    "split",
    "manufacturer",
    "scanner_model",
    "kvp",
    "pathology",
    "pathology_location",
)
#: Columns without which meta.csv is unusable; the others are optional metadata.
REQUIRED_META_COLUMNS: tuple[str, ...] = ("image_id",)


def read_meta_csv(path: str | Path, *, required: Sequence[str] = REQUIRED_META_COLUMNS):
    """Read a TotalSegmentator ``meta.csv`` into a DataFrame of strings indexed by ``image_id``.

    Args:
        path: the ``meta.csv`` file (semicolon-separated; a UTF-8 BOM is accepted).
        required: columns that must be present.

    Returns:
        ``pandas.DataFrame`` with one row per subject, all values as stripped strings
        (missing values as ``""``), indexed by ``image_id``.

    Raises:
        DataError: the file is empty, not UTF-8, not semicolon-separated, lacks a required column,
            or repeats an ``image_id``.
    """
    import pandas as pd

    p = Path(path)
    try:
        raw = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{p}: expected UTF-8 text, cannot decode byte {err.start} ({err.reason})") from err
    from io import StringIO

    if not raw.strip():
        raise DataError(f"{p}: the file is empty; expected a semicolon-separated header line ({';'.join(META_COLUMNS)}) and one row per subject")
    try:
        table = pd.read_csv(StringIO(raw), sep=";", dtype=str, keep_default_na=False)
    except Exception as err:
        raise DataError(f"{p}: cannot parse as a semicolon-separated table ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    if len(table.columns) == 1 and ("," in table.columns[0] or "\t" in table.columns[0]):
        raise DataError(
            f"{p}: expected semicolon-separated columns ({';'.join(META_COLUMNS)}), "
            f"but the header looks separated by another character: {table.columns[0][:80]!r}"
        )
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"{p}: missing required column(s) {missing}; found {list(table.columns)}; expected at least {list(required)}"
        )
    table = table.apply(lambda col: col.str.strip())
    duplicated = table["image_id"][table["image_id"].duplicated()].tolist()
    if duplicated:
        raise DataError(f"{p}: image_id values repeat: {duplicated[:5]}")
    return table.set_index("image_id", drop=False)


def list_subject_dirs(root: str | Path) -> list[Path]:
    """Subject folders (those holding ``ct.nii.gz`` or ``segmentations/``) under a dataset root, sorted."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"dataset root {r} does not exist or is not a folder")
    return sorted(d for d in r.iterdir() if d.is_dir() and ((d / "ct.nii.gz").exists() or (d / "segmentations").is_dir()))


def validate_mapping(mapping: Mapping[str, Sequence[str]], class_names: Sequence[str] = THORAX_CLASSES) -> None:
    """Raise DataError if the mapping names a label that is not a foreground class."""
    foreground = list(class_names[1:])
    for label in mapping:
        if label not in foreground:
            raise DataError(f"structure mapping names label {label!r}, which is not one of the classes {foreground}"
                            f"{did_you_mean(label, foreground)}")


def merge_structures(
    subject_dir: str | Path,
    mapping: Mapping[str, Sequence[str]],
    *,
    class_names: Sequence[str] = THORAX_CLASSES,
    reference: tuple[tuple[int, ...], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge a subject's per-structure masks into one label map.

    Overlap rule: where merged masks of two labels overlap, the voxel goes to the label whose merged
    mask is smaller in this scan (ties: the higher label id), so thin structures are not swallowed.

    Args:
        subject_dir: the subject folder (holding ``segmentations/``).
        mapping: label name -> structure names (see :func:`agg2exp_lightning.labels.load_structure_mapping`).
        class_names: label names by id; the mapping's labels must be among ``class_names[1:]``.
        reference: ``(shape, affine)`` the masks must match (the CT's); default: the first mask's.

    Returns:
        ``(labels uint8 [X, Y, Z], affine)``.

    Raises:
        DataError: a mapped structure file is missing, unreadable, not binary, or on another grid.
    """
    validate_mapping(mapping, class_names)
    subject_dir = Path(subject_dir)
    seg_dir = subject_dir / "segmentations"
    if not seg_dir.is_dir():
        raise DataError(f"subject {subject_dir.name}: folder {seg_dir} does not exist")
    present = {p.name[: -len(".nii.gz")] for p in seg_dir.glob("*.nii.gz")}
    wanted = {s for structures in mapping.values() for s in structures}
    unused = sorted(present - wanted)
    if unused:
        log.debug("subject %s: %d structures not in the mapping are ignored", subject_dir.name, len(unused))
    masks: dict[int, np.ndarray] = {}
    for label, structures in mapping.items():
        label_id = class_names.index(label)
        merged = None
        for structure in structures:
            path = seg_dir / f"{structure}.nii.gz"
            what = f"subject {subject_dir.name}, structure {structure!r} (label {label!r})"
            if structure not in present:
                near = nearest(structure, sorted(present))
                hint = f"; closest file present: {near}.nii.gz" if near else ""
                raise DataError(f"{what}: expected mask file {path}, which does not exist{hint}")
            data, affine = load_nifti(path, what=what)
            if reference is None:
                reference = (data.shape, affine)
            check_same_grid(reference[0], reference[1], data.shape, affine, what=f"{what}, file {path}")
            mask = check_binary(data, what=f"{what}, file {path}")
            merged = mask if merged is None else (merged | mask)
        if merged is not None:
            masks[label_id] = merged
    if reference is None:
        raise DataError(f"subject {subject_dir.name}: the mapping names no structures")
    labels = np.zeros(reference[0], dtype=np.uint8)
    # Paint large masks first so that smaller ones win where they overlap (ties: higher id last).
    order = sorted(masks, key=lambda i: (-int(masks[i].sum()), i))
    for label_id in order:
        labels[masks[label_id]] = label_id
    return labels, reference[1]


def load_totalsegmentator_subject(
    subject_dir: str | Path, mapping: Mapping[str, Sequence[str]], *, class_names: Sequence[str] = THORAX_CLASSES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load a subject's CT (float32 HU) and merged labels on the same grid.

    Returns:
        ``(ct float32 [X, Y, Z], labels uint8 [X, Y, Z], affine 4x4)``.

    Raises:
        DataError: see :func:`load_nifti`, :func:`check_ct` and :func:`merge_structures`.
    """
    subject_dir = Path(subject_dir)
    ct, affine = load_nifti(subject_dir / "ct.nii.gz", what=f"CT of subject {subject_dir.name}")
    ct = check_ct(ct, what=f"CT of subject {subject_dir.name}", path=subject_dir / "ct.nii.gz")
    labels, _ = merge_structures(subject_dir, mapping, class_names=class_names, reference=(ct.shape, affine))
    return ct, labels, affine


def warn_missing_meta(root: Path) -> None:
    """Warn that a dataset has no meta.csv and will run without metadata."""
    msg = f"{root / 'meta.csv'} not found: running without metadata (splits assigned from subject ids)"
    log.warning(msg)
    warnings.warn(msg, stacklevel=3)

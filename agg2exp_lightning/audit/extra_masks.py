"""Extra per-scan masks as regions of a model audit (``--extra-masks DIR``), e.g. a pathology.

Layout: ``DIR/<subject id>/<name>.nii.gz`` (or ``.nii``), one binary mask per file on the grid of the
subject's CT. Every ``name`` found becomes a region column after the model's classes (the authors'
``aggregate_explanations_custom_masks.py`` did this for pleural effusion and consolidation); a subject
without one of the masks has that region empty (its share follows the protocol's empty-region
convention). Every file is checked against its scan before anything is written: a file whose shape or
affine differs from the CT's stops the audit with a message naming the file and what was expected.
The masks then go through the scan's own preprocessing (orientation, resampling with nearest
neighbours, the crop), so they stay aligned with the explained volume.
"""
from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform

from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["EXTRA_MASKS_KEY", "LoadExtraMasksd", "find_extra_masks"]

#: Key of the ``[K, *S]`` mask stack in a preprocessed item.
EXTRA_MASKS_KEY = "extra_masks"
_SUFFIXES = (".nii.gz", ".nii")


def _stem(path: Path) -> str | None:
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def find_extra_masks(folder: str | Path, records: Sequence[Any], class_names: Sequence[str]) -> tuple[list[str], dict[str, dict[str, Path]]]:
    """The mask names and, per subject, its files; every file checked against the subject's CT grid.

    Args:
        folder: ``DIR`` of the layout in the module docstring.
        records: :class:`~agg2exp_lightning.data.subjects.SubjectRecord` of every scan to audit.
        class_names: the model's classes (a mask may not take a class's name).

    Returns:
        ``(names, {subject id: {name: path}})``; names sorted.

    Raises:
        DataError: the folder does not exist or holds no mask of these subjects, a mask name is a
            class name, or a mask's shape or affine differs from its CT (naming both files).
    """
    import nibabel as nib

    from agg2exp_lightning.data.nifti import check_same_grid

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--extra-masks {root}: not a folder; expected DIR/<subject id>/<name>.nii.gz")
    files: dict[str, dict[str, Path]] = {}
    for record in records:
        sub = root / str(record.subject_id)
        found = {}
        for p in sorted(sub.glob("*.nii*")) if sub.is_dir() else []:
            name = _stem(p)
            if name:
                found[name] = p
        if found:
            files[str(record.subject_id)] = found
    names = sorted({n for f in files.values() for n in f})
    if not names:
        raise DataError(f"--extra-masks {root}: no mask of the audited subjects found; expected DIR/<subject id>/<name>.nii.gz")
    clash = sorted(set(names) & set(class_names))
    if clash:
        raise DataError(f"--extra-masks {root}: mask names {clash} are class names of the model; rename the files")
    for record in records:
        sid = str(record.subject_id)
        if sid not in files:
            log.warning("--extra-masks: no mask for subject %s; its extra regions are empty", sid)
            continue
        ct = nib.load(str(record.image))
        for name, p in files[sid].items():
            try:
                img = nib.load(str(p))
            except Exception as err:  # nibabel raises several kinds for a file that is not NIfTI
                raise DataError(f"extra mask {p}: cannot be read as NIfTI ({type(err).__name__}: {err})") from err
            check_same_grid(tuple(ct.shape[:3]), ct.affine, tuple(img.shape[:3]), img.affine,
                            what=f"extra mask {p} (expected the grid of the scan {record.image})")
    return names, files


class LoadExtraMasksd(Transform):
    """Adds ``[K, *S]`` extra masks (on the CT's grid and affine) under :data:`EXTRA_MASKS_KEY`.

    Args:
        names: the mask names (stack order).
        files: ``{subject id: {name: path}}`` from :func:`find_extra_masks`; a missing mask is all zero.
    """

    def __init__(self, names: Sequence[str], files: Mapping[str, Mapping[str, Path]]) -> None:
        self.names = list(names)
        self.files = {k: dict(v) for k, v in files.items()}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        from agg2exp_lightning.data.nifti import check_binary, check_same_grid, load_nifti

        out = dict(data)
        image = out["image"]
        shape, affine = tuple(image.shape[1:]), image.affine.numpy()
        stack = np.zeros((len(self.names), *shape), dtype=np.float32)
        for k, name in enumerate(self.names):
            path = self.files.get(str(out["subject_id"]), {}).get(name)
            if path is None:
                continue
            mask, mask_affine = load_nifti(path, what=f"extra mask {name!r}")
            check_same_grid(shape, affine, tuple(mask.shape), mask_affine, what=f"extra mask {path}")
            stack[k] = check_binary(mask, what=f"extra mask {path}")
        out[EXTRA_MASKS_KEY] = MetaTensor(torch.from_numpy(stack), affine=image.affine.clone())
        return out

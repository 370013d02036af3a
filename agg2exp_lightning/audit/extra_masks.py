"""Extra per-scan masks as regions of a model audit (``--extra-masks DIR``), e.g. a pathology.

Layout: ``DIR/<subject id>/<name>.<format>``, one binary mask per file on the grid of the subject's CT, in
any format :func:`~agg2exp_lightning.data.reading.read_volume` reads (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``,
``.mha``/``.mhd`` with ITK, or a folder ``<name>/`` holding a DICOM series). Every ``name`` found becomes a region column after the model's classes (the authors'
``aggregate_explanations_custom_masks.py`` did this for pleural effusion and consolidation); a subject
without one of the masks has that region empty (its share follows the protocol's empty-region
convention). Every file is checked against its scan before anything is written: a file whose shape or
affine differs from the CT's stops the audit with one line naming the file and both grids (a scan that
cannot be read is left to the audit, which reports it and finishes the others).
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

__all__ = ["EXTRA_MASKS_KEY", "LoadExtraMasksd", "classes_leaning_on", "find_extra_masks"]

#: Key of the ``[K, *S]`` mask stack in a preprocessed item.
EXTRA_MASKS_KEY = "extra_masks"
_LAYOUT = "DIR/<subject id>/<name>.nii.gz (or .nii, .nrrd, .nhdr, .mha, .mhd, a DICOM series folder)"


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
    from agg2exp_lightning.data.nifti import check_same_grid
    from agg2exp_lightning.data.reading import is_volume_path, read_grid, volume_stem

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--extra-masks {root}: not a folder; expected {_LAYOUT}")
    files: dict[str, dict[str, Path]] = {}
    for record in records:
        sub = root / str(record.subject_id)
        found = {}
        for p in sorted(sub.iterdir()) if sub.is_dir() else []:
            if p.name.startswith(".") or not is_volume_path(p) or p.suffix.lower() == ".raw":
                continue
            name = volume_stem(p)
            if name in found:
                raise DataError(f"--extra-masks {sub}: two files for the mask {name!r} ({found[name].name}, {p.name}); keep one")
            found[name] = p
        if found:
            files[str(record.subject_id)] = found
    names = sorted({n for f in files.values() for n in f})
    if not names:
        raise DataError(f"--extra-masks {root}: no mask of the audited subjects found; expected {_LAYOUT}")
    clash = sorted(set(names) & set(class_names))
    if clash:
        raise DataError(f"--extra-masks {root}: mask names {clash} are class names of the model; rename the files")
    for record in records:
        sid = str(record.subject_id)
        if sid not in files:
            log.warning("--extra-masks: no mask for subject %s; its extra regions are empty", sid)
            continue
        try:
            ct_grid = read_grid(record.image, what=f"image of subject {sid}", series=record.metadata.get("series") or None)
        except DataError as err:  # the audit reports the scan as failed and finishes the others
            log.warning("--extra-masks: masks of subject %s not checked: %s", sid, err)
            continue
        for name, p in files[sid].items():
            shape, affine = read_grid(p, what=f"extra mask {name!r} of subject {sid}")
            check_same_grid(ct_grid[0], ct_grid[1], shape, affine, what=f"extra mask {p} (expected the grid of the scan {record.image})")
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

        from agg2exp_lightning.data.nifti import check_binary, check_same_grid
        from agg2exp_lightning.data.reading import read_volume

        out = dict(data)
        image = out["image"]
        shape, affine = tuple(image.shape[1:]), image.affine.numpy()
        stack = np.zeros((len(self.names), *shape), dtype=np.float32)
        for k, name in enumerate(self.names):
            path = self.files.get(str(out["subject_id"]), {}).get(name)
            if path is None:
                continue
            mask, mask_affine = read_volume(path, what=f"extra mask {name!r}")
            check_same_grid(shape, affine, tuple(mask.shape), mask_affine, what=f"extra mask {path}")
            stack[k] = check_binary(mask, what=f"extra mask {path}")
        out[EXTRA_MASKS_KEY] = MetaTensor(torch.from_numpy(stack), affine=image.affine.clone())
        return out


def classes_leaning_on(importance: np.ndarray, classes: Sequence[str], regions: Sequence[str], names: Sequence[str],
                       top: int = 3) -> dict[str, list[tuple[str, float]]]:
    """Per extra region, the classes whose explanations put the largest mean share of their mass in it.

    Args:
        importance: ``[A, R]`` mean mass share of class ``a`` in region ``r`` over scans (the audit's RoI importance).
        classes: the ``A`` explained classes.
        regions: the ``R`` regions (the extra masks among them).
        names: the extra masks' names.
        top: how many classes per region.

    Returns:
        ``{name: [(class, mean share), ...]}``, largest share first; classes with no finite share left out.

    Raises:
        ValueError: ``importance`` is not ``[len(classes), len(regions)]``, or a name is not a region.
    """
    imp = np.asarray(importance, dtype=float)
    if imp.shape != (len(classes), len(regions)):
        raise ValueError(f"Expected `importance` of shape {(len(classes), len(regions))}, got {imp.shape}")
    out = {}
    for name in names:
        if name not in regions:
            raise ValueError(f"extra region {name!r} is not among the regions {list(regions)}")
        column = imp[:, list(regions).index(name)]
        order = [i for i in np.argsort(-np.nan_to_num(column, nan=-np.inf)) if np.isfinite(column[i])][:top]
        out[name] = [(str(classes[i]), float(column[i])) for i in order]
    return out

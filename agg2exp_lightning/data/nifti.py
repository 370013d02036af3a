"""Checks on volumes read by :func:`~agg2exp_lightning.data.reading.read_volume`, with errors that name the file
and what was expected; :func:`load_nifti` is the name the TotalSegmentator layout reads its files by."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agg2exp_lightning.data.reading import MAX_VOXEL_MM, describe_grid, read_volume
from agg2exp_lightning.errors import DataError

__all__ = ["AFFINE_TOLERANCE", "MAX_VOXEL_MM", "check_binary", "check_ct", "check_same_grid", "load_nifti"]

#: Largest deviation tolerated between two affines that must describe the same grid (mm).
AFFINE_TOLERANCE = 1e-3


def load_nifti(path: str | Path, *, what: str = "volume") -> tuple[np.ndarray, np.ndarray]:
    """Load a volume fully into memory: :func:`~agg2exp_lightning.data.reading.read_volume` (NIfTI through MONAI's
    ``NibabelReader``; the other formats it reads are accepted too).

    Returns:
        ``(array, affine)``: the voxel array as stored (no scaling beyond the header's) and the 4x4 affine.

    Raises:
        DataError: see :func:`~agg2exp_lightning.data.reading.read_volume`.
    """
    return read_volume(path, what=what)


def check_ct(ct: np.ndarray, *, what: str, path: str | Path) -> np.ndarray:
    """Return ``ct`` as float32 Hounsfield units, or raise DataError if it cannot be a CT.

    Raises:
        DataError: NaN or infinite voxels, or only the values 0 and 1 (a mask saved as the image).
    """
    ct = ct.astype(np.float32, copy=False)
    if not np.all(np.isfinite(ct)):
        bad = int(np.size(ct) - np.count_nonzero(np.isfinite(ct)))
        raise DataError(f"{what}: {path} holds {bad} NaN or infinite voxels, expected finite Hounsfield units")
    if ct.size and ct.min() >= 0 and ct.max() <= 1 and np.all((ct == 0) | (ct == 1)):
        raise DataError(f"{what}: {path} holds only the values 0 and 1 (a mask?), expected a CT in Hounsfield units")
    return ct


def check_same_grid(
    shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray, *, what: str
) -> None:
    """Raise DataError unless two volumes share shape and affine (within AFFINE_TOLERANCE mm); the one-line message
    names both grids (``a`` is the image's, ``b`` this file's)."""
    if tuple(shape_a) != tuple(shape_b):
        raise DataError(f"{what}: shape {tuple(shape_b)} does not match the image's shape {tuple(shape_a)} "
                        f"(this file: {describe_grid(shape_b, affine_b)}; the image: {describe_grid(shape_a, affine_a)})")
    if not np.allclose(affine_a, affine_b, atol=AFFINE_TOLERANCE):
        raise DataError(f"{what}: affine does not match the image's affine (this file: {describe_grid(shape_b, affine_b)}; "
                        f"the image: {describe_grid(shape_a, affine_a)}; largest difference "
                        f"{float(np.max(np.abs(np.asarray(affine_a) - np.asarray(affine_b)))):.4g} mm)")


def check_binary(mask: np.ndarray, *, what: str) -> np.ndarray:
    """Return ``mask`` as bool, or raise DataError if it holds values other than 0 and 1."""
    if mask.dtype == bool:
        return mask
    values = np.unique(mask)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise DataError(f"{what}: expected a binary mask with values 0/1, found values {shown}")
    return mask.astype(bool)

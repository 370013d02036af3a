"""Reading NIfTI volumes with errors that name the file and what was expected."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agg2exp_lightning.errors import DataError

#: Largest deviation tolerated between two affines that must describe the same grid (mm).
AFFINE_TOLERANCE = 1e-3
#: Largest voxel side accepted (mm); anything above is a broken header, and resampling it would not fit in memory.
MAX_VOXEL_MM = 100.0


def load_nifti(path: str | Path, *, what: str = "volume") -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI file fully into memory.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        what: what the file is, for error messages (e.g. ``"CT of subject s0001"``).

    Returns:
        ``(array, affine)``: the voxel array as stored (no scaling beyond the header's) and the 4x4 affine.

    Raises:
        DataError: the file is missing, truncated, not NIfTI, not 3D, not real-valued (complex, RGB), or
            its geometry is broken: zero, negative or non-finite ``pixdim``, a singular or non-finite
            affine, or voxels larger than :data:`MAX_VOXEL_MM`.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what}: file {p} does not exist")
    try:
        img = nib.load(str(p))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"{what}: {p} is a {type(img).__name__}, expected a NIfTI image")
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, OSError...
        raise DataError(
            f"{what}: cannot read {p} as NIfTI ({type(err).__name__}: {err}); expected a complete .nii/.nii.gz file"
        ) from err
    if data.dtype.fields is not None or data.dtype.kind not in "biuf":
        raise DataError(
            f"{what}: {p} holds voxels of type {_dtype_name(data.dtype)}, expected one real number per voxel "
            "(an integer or floating-point NIfTI)"
        )
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{what}: {p} has shape {data.shape}, expected a 3D volume")
    pixdim = _stored_pixdim(img, p)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise DataError(f"{what}: {p} has voxel sizes (header pixdim) {pixdim.tolist()}, expected three positive numbers (mm)")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(f"{what}: {p} has a degenerate or non-finite affine:\n{affine}")
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(voxel > MAX_VOXEL_MM):
        raise DataError(
            f"{what}: {p} has voxel sizes {np.round(voxel, 3).tolist()} mm in its affine, expected at most {MAX_VOXEL_MM:g} mm"
        )
    return data, affine


def _stored_pixdim(img, path: Path) -> np.ndarray:
    """``pixdim[1:4]`` as stored in the file (nibabel's loaded header silently turns 0 into 1 and drops signs)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        return f"{''.join(dtype.names)} ({dtype})"  # e.g. RGB
    return str(dtype)


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
    """Raise DataError unless two volumes share shape and affine (within AFFINE_TOLERANCE mm)."""
    if tuple(shape_a) != tuple(shape_b):
        raise DataError(f"{what}: shape {tuple(shape_b)} does not match the image's shape {tuple(shape_a)}")
    if not np.allclose(affine_a, affine_b, atol=AFFINE_TOLERANCE):
        raise DataError(
            f"{what}: affine does not match the image's affine\nimage:\n{np.round(affine_a, 4)}\n"
            f"this file:\n{np.round(affine_b, 4)}"
        )


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

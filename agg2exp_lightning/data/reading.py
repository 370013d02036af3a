"""One reading path for scans, label maps and masks: NIfTI, NRRD, MetaImage and DICOM series.

Every file goes through one of MONAI's readers (:class:`~monai.data.NibabelReader` for NIfTI,
:class:`~monai.data.NrrdReader` for NRRD, :class:`~monai.data.PydicomReader` for DICOM,
:class:`~monai.data.ITKReader` for MetaImage ``.mha``/``.mhd`` where ITK is installed), so that the
array and the affine are exactly what MONAI's ``LoadImage`` gives: the affine maps voxel indices to
world millimetres in RAS (MONAI turns the LPS of NRRD, DICOM and ITK into RAS, as nibabel has it),
and the array keeps the file's own axis order. Orientation and spacing are then the preprocessing's
business (:func:`~agg2exp_lightning.data.transforms.preprocessing`), and maps go back onto the file's
grid by that same affine (:mod:`~agg2exp_lightning.audit.maps`).

A DICOM series is a folder of slices (not searched recursively). A folder holding several image
series needs ``series=`` (a SeriesInstanceUID or a SeriesNumber; in a manifest the ``series``
column); without it the reader stops and lists them.

Every failure is one :class:`~agg2exp_lightning.errors.DataError` line naming the file, the reader
tried and what was expected.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["VOLUME_SUFFIXES", "DicomSeries", "describe_grid", "is_volume_path", "list_dicom_series", "read_grid", "read_volume"]

#: File endings read as a volume (a folder is read as a DICOM series).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: Largest voxel side accepted (mm); anything above is a broken header, and resampling it would not fit in memory.
MAX_VOXEL_MM = 100.0
_EXPECTED = "a 3D scan as NIfTI (.nii/.nii.gz), NRRD (.nrrd/.nhdr), MetaImage (.mha/.mhd) or a folder holding a DICOM series"


def _format(path: Path) -> str | None:
    """``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"dicom"`` (a folder or ``.dcm``), or ``None``."""
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for suffix, fmt in ((".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"), (".nhdr", "nrrd"), (".mha", "metaimage"),
                        (".mhd", "metaimage"), (".dcm", "dicom")):
        if name.endswith(suffix):
            return fmt
    return None


def is_volume_path(path: str | Path) -> bool:
    """Whether ``path`` is a file with one of :data:`VOLUME_SUFFIXES` or a folder (a DICOM series)."""
    return _format(Path(path)) is not None


def volume_stem(path: str | Path) -> str:
    """The file name without its volume suffix (``heart.nii.gz`` -> ``heart``); a folder keeps its name."""
    p = Path(path)
    if p.is_dir():
        return p.name
    for suffix in VOLUME_SUFFIXES:
        if p.name.lower().endswith(suffix):
            return p.name[: -len(suffix)]
    return p.stem


@dataclass(frozen=True)
class DicomSeries:
    """One image series of a DICOM folder.

    Attributes:
        uid: SeriesInstanceUID.
        number: SeriesNumber (``""`` when absent).
        description: SeriesDescription (``""`` when absent).
        files: the series' slice files.
    """

    uid: str
    number: str
    description: str
    files: tuple[str, ...]

    def __str__(self) -> str:
        desc = f" {self.description!r}" if self.description else ""
        return f"series {self.number or '?'}{desc} ({len(self.files)} files, SeriesInstanceUID {self.uid})"


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The image series of a DICOM folder (its files only, not its sub-folders), by SeriesNumber.

    Files that are not DICOM, and DICOM files without an image (reports, structure sets), are skipped.

    Raises:
        DataError: the folder does not exist, or pydicom is not installed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder holding a DICOM series")
    pydicom = _pydicom(root)
    groups: dict[str, list[Any]] = {}
    for name in sorted(os.listdir(root)):
        f = os.path.join(str(root), name)
        if not os.path.isfile(f):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not DICOM (pydicom raises InvalidDicomError, or struct/OSError for odd files)
            continue
        if "Rows" not in ds or "ImagePositionPatient" not in ds:
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        series.append(DicomSeries(uid, str(first.get("SeriesNumber", "") or ""), str(first.get("SeriesDescription", "") or ""),
                                  tuple(f for f, _ in members)))
    return sorted(series, key=lambda s: (int(s.number) if s.number.lstrip("-").isdigit() else 1 << 30, s.uid))


def _pydicom(path: Path):
    try:
        import pydicom
    except ImportError as err:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install pydicom)") from err
    return pydicom


def _pick_series(folder: Path, series: str | None, what: str) -> DicomSeries:
    found = list_dicom_series(folder)
    if not found:
        n = sum(1 for f in folder.iterdir() if f.is_file())
        raise DataError(f"{what}: {folder} holds no DICOM image series ({n} files, none a DICOM image with ImagePositionPatient); "
                        "expected a folder of DICOM slices")
    if series is not None:
        chosen = [s for s in found if series in (s.uid, s.number)]
        if len(chosen) != 1:
            raise DataError(f"{what}: {folder} has {'no' if not chosen else 'several'} series {series!r}; its series: "
                            + "; ".join(str(s) for s in found))
        return chosen[0]
    if len(found) > 1:
        raise DataError(f"{what}: {folder} holds {len(found)} image series; pick one by SeriesInstanceUID or SeriesNumber "
                        "(series=..., a manifest's 'series' column): " + "; ".join(str(s) for s in found))
    return found[0]


def _reader(fmt: str, path: Path, what: str, series: str | None):
    """``(reader, what to pass to reader.read, reader name)``."""
    from monai.data import NibabelReader, NrrdReader, PydicomReader

    if fmt == "nifti":
        return NibabelReader(), str(path), "NibabelReader"
    if fmt == "nrrd":
        try:
            import nrrd  # noqa: F401
        except ImportError as err:
            raise DataError(f"{what}: reading {path} (NRRD) needs pynrrd (pip install pynrrd)") from err
        return NrrdReader(), str(path), "NrrdReader"
    if fmt == "metaimage":
        try:
            import itk  # noqa: F401
        except ImportError as err:
            raise DataError(f"{what}: reading {path} (MetaImage) needs ITK (pip install itk-io), "
                            "or convert it to NIfTI or NRRD") from err
        from monai.data import ITKReader

        return ITKReader(), str(path), "ITKReader"
    _pydicom(path)
    if path.is_dir():
        chosen = _pick_series(path, series, what)
        folder = str(path)
        # PydicomReader reads every file of a folder matching fname_regex: match this series' files only
        pattern = "(?:" + "|".join(re.escape(os.path.join(folder, os.path.basename(f))) for f in chosen.files) + r")\Z"
        return PydicomReader(fname_regex=pattern), folder, "PydicomReader"
    return PydicomReader(), str(path), "PydicomReader"


def _space_to_ras(meta: dict, affine: np.ndarray, path: Path, what: str) -> np.ndarray:
    """MONAI's NrrdReader turns an LPS space into RAS and leaves any other space as it is; make every space RAS."""
    space = str(meta.get("space", "")).lower()
    if not space or space in ("ras", "lps", "left-posterior-superior", "right-anterior-superior"):
        return affine
    words = space.split("-")
    if len(words) != 3 or any(w not in ("left", "right", "anterior", "posterior", "superior", "inferior") for w in words):
        raise DataError(f"{what}: {path} has NRRD space {space!r}, expected an anatomical space such as left-posterior-superior")
    flip = np.diag([-1.0 if w in ("left", "posterior", "inferior") else 1.0 for w in words] + [1.0])
    return flip @ affine


def read_volume(path: str | Path, *, what: str = "volume", series: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D scan, label map or mask through MONAI's reader for its format.

    Args:
        path: a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd`` (needs ITK) or ``.dcm`` file, or a
            folder holding a DICOM series.
        what: what the file is, for error messages (e.g. ``"image of subject s0001"``).
        series: for a DICOM folder with several image series, the SeriesInstanceUID or SeriesNumber to read.

    Returns:
        ``(array, affine)``: the voxels in the file's axis order (NIfTI keeps its stored type; NRRD, DICOM and
        MetaImage as their readers give them) and the 4x4 voxel -> world (RAS mm) affine, both as MONAI's
        ``LoadImage`` gives them; a trailing axis of length 1 is dropped.

    Raises:
        DataError: one line naming the file and the reader tried: missing, unknown format, unreadable, a DICOM
            folder with no image series (or several and no ``series``), not 3D (naming the shape), not one real
            number per voxel, or a broken geometry (singular or non-finite affine, voxels over :data:`MAX_VOXEL_MM`).

    Example:
        >>> image, affine = read_volume("lung2_image.nrrd", what="CT")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what}: file {p} does not exist")
    fmt = _format(p)
    if fmt is None:
        raise DataError(f"{what}: {p} is not a format the toolkit reads; expected {_EXPECTED}")
    reader, source, name = _reader(fmt, p, what, series)
    kind = {"nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "dicom": "DICOM"}[fmt]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's readers warn about metadata they drop; errors are raised below
            if fmt == "nifti":  # the file's own header, before MONAI rectifies an sform that disagrees with pixdim
                import nibabel as nib

                stored = nib.load(str(p))
                _check_nifti_object(stored, p, what)
            img = reader.read(source)
            data, meta = reader.get_data(img)
    except DataError:
        raise
    except Exception as err:  # every reader raises its own kinds (nibabel, pynrrd, pydicom, ITK, zlib, OSError...)
        message = " ".join(str(err).split())[:300]
        raise DataError(f"{what}: cannot read {p} as {kind} with MONAI's {name} ({type(err).__name__}: {message}); "
                        f"expected {_EXPECTED}") from err
    data = np.asarray(data)
    affine = np.asarray(meta.get("affine"), dtype=np.float64)
    if fmt == "nrrd":
        affine = _space_to_ras(meta, affine, p, what)
    if data.dtype.fields is not None or data.dtype.kind not in "biuf":
        raise DataError(f"{what}: {p} holds voxels of type {_dtype_name(data.dtype)}, expected one real number per voxel "
                        f"(read with MONAI's {name})")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        extra = "this is a 4D volume (time points or channels); " if data.ndim == 4 else ""
        raise DataError(f"{what}: {p} has shape {tuple(data.shape)}, expected a 3D volume ({extra}read with MONAI's {name})")
    if fmt == "nifti":
        _check_nifti_pixdim(stored, p, what)
        _check_geometry(np.asarray(stored.affine, dtype=np.float64), p, what, name)
    _check_geometry(affine, p, what, name)
    return data, affine


def _check_geometry(affine: np.ndarray, path: Path, what: str, name: str) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(f"{what}: {path} has a degenerate or non-finite affine {np.round(affine, 4).tolist()} (read with MONAI's {name})")
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(voxel > MAX_VOXEL_MM):
        raise DataError(f"{what}: {path} has voxel sizes {np.round(voxel, 3).tolist()} mm in its affine, expected at most "
                        f"{MAX_VOXEL_MM:g} mm")


def read_grid(path: str | Path, *, what: str = "volume", series: str | None = None) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine)`` of a volume, as :func:`read_volume` gives them; only the header for NIfTI.

    Raises:
        DataError: as :func:`read_volume`.
    """
    p = Path(path)
    if _format(p) == "nifti" and p.is_file():
        import nibabel as nib

        try:
            img = nib.load(str(p))  # lazy: the header only; MONAI's NibabelReader takes the same img.affine
            shape = tuple(int(s) for s in img.shape)
        except Exception:
            shape = None
        if shape is not None and (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
            return shape[:3], np.asarray(img.affine, dtype=np.float64)
    data, affine = read_volume(p, what=what, series=series)
    return tuple(int(s) for s in data.shape), affine


def describe_grid(shape: tuple[int, ...], affine: np.ndarray) -> str:
    """One line: ``233x167x191 voxels of 1.5x1.5x1.5 mm, axes LPS, origin (179.7, 275.2, 540.2) mm (RAS)``."""
    import nibabel as nib

    a = np.asarray(affine, dtype=float)
    voxel = np.linalg.norm(a[:3, :3], axis=0)
    try:
        axes = "".join(nib.aff2axcodes(a))
    except Exception:  # a degenerate affine
        axes = "?"
    return (f"{'x'.join(str(int(s)) for s in shape)} voxels of {'x'.join(f'{v:.4g}' for v in voxel)} mm, axes {axes}, "
            f"origin ({', '.join(f'{v:.1f}' for v in a[:3, 3])}) mm (RAS)")


def _check_nifti_object(img: Any, path: Path, what: str) -> None:
    import nibabel as nib

    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{what}: {path} is a {type(img).__name__}, expected a NIfTI image (read with MONAI's NibabelReader)")


def _check_nifti_pixdim(img: Any, path: Path, what: str) -> None:
    """``pixdim[1:4]`` as stored in the file must be positive and finite (nibabel's loaded header silently turns 0
    into 1 and drops signs)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise DataError(f"{what}: {path} has voxel sizes (header pixdim) {pixdim.tolist()}, expected three positive numbers (mm)")


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        return f"{''.join(dtype.names)} ({dtype})"  # e.g. RGB
    return str(dtype)

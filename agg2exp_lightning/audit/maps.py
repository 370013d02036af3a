"""Explanation maps as NIfTI files in the scan's own grid, for ITK-SNAP, 3D Slicer or MITK.

The model sees each scan after :func:`~agg2exp_lightning.data.transforms.preprocessing`: reoriented
to RAS, resampled to the model's spacing, cropped to the body (and, in other pipelines, padded).
MONAI tracks every one of these steps in the MetaTensor's affine, so a map on the model's grid is
brought back to the file's grid by one resampling from the preprocessed affine to the file's own
affine and shape (MONAI's :class:`~monai.transforms.SpatialResample`, the resampler MONAI's own
inverse of ``Spacing``/``Orientation`` calls). Voxels outside the crop get 0 (background for the
label map). Attribution values are per voxel of the model's grid, interpolated (bilinear): shares
of the attribution mass per region are preserved up to the interpolation at region borders,
absolute sums scale with the voxel-size ratio.

Per scan and explained class the attribution map (float32), and the prediction as a label map
(uint8), are written as ``maps/<scan>/<scan>_attribution_<class>.nii.gz`` and
``maps/<scan>/<scan>_prediction.nii.gz``, plus one colour table for the labels
(``maps/labels_itksnap.txt``, ITK-SNAP's label description format).
"""
from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agg2exp_lightning.audit.scan_records import record_stem
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.utils import atomic_write_bytes, atomic_write_json, plain_tensor

log = logging.getLogger(__name__)

__all__ = [
    "ScanGeometry",
    "MapWriter",
    "check_room_for_maps",
    "estimate_map_bytes",
    "map_paths",
    "maps_status",
    "maps_written",
    "to_original_grid",
    "write_colour_table",
    "write_scan_grid_maps",
    "write_scan_maps",
]

#: Bytes per voxel of the uncompressed label map, and of each attribution map.
LABEL_BYTES, ATTRIBUTION_BYTES = 1, 4
#: Name of the colour table beside the maps.
COLOUR_TABLE = "labels_itksnap.txt"


@dataclass(frozen=True)
class ScanGeometry:
    """Where the model's grid lies in the scan's file: enough to undo the preprocessing.

    Attributes:
        affine: ``4x4`` voxel -> world (RAS mm) of the preprocessed volume (MONAI's MetaTensor ``affine``).
        original_affine: ``4x4`` affine of the scan's file.
        original_shape: the file's spatial shape.
    """

    affine: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, ...]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], index: int | None = None) -> ScanGeometry:
        """From a MetaTensor's ``meta`` (``affine``, ``original_affine``, ``spatial_shape`` as
        :class:`~agg2exp_lightning.data.transforms.LoadSubjectd` records them); ``index`` picks one item of a batch.

        Raises:
            DataError: one of the three keys is missing (the scan was not loaded by ``LoadSubjectd``).
        """
        missing = [k for k in ("affine", "original_affine", "spatial_shape") if k not in meta]
        if missing:
            raise DataError(f"cannot map back to the scan's grid: its metadata lacks {missing}")

        def pick(value: Any) -> np.ndarray:
            arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=float)
            return arr[index] if index is not None else arr

        shape = pick(meta["spatial_shape"]).astype(int).reshape(-1)
        return cls(pick(meta["affine"]).reshape(4, 4), pick(meta["original_affine"]).reshape(4, 4), tuple(int(s) for s in shape))


def to_original_grid(volume: np.ndarray | torch.Tensor, geometry: ScanGeometry, *,
                     mode: Literal["bilinear", "nearest"] = "bilinear") -> np.ndarray:
    """Resample ``volume`` ``[C, *S]`` from the model's grid onto the scan file's grid.

    Args:
        volume: maps on the preprocessed grid (channel first).
        geometry: the preprocessed and original affines and the original shape.
        mode: ``"bilinear"`` for attributions, ``"nearest"`` for label maps.

    Returns:
        ``[C, *original_shape]`` float32 array; 0 outside the preprocessed volume.

    Raises:
        ValueError: ``volume`` is not ``[C, X, Y, Z]`` or an affine is singular.
    """
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    x = torch.as_tensor(plain_tensor(volume)).detach().float().cpu()
    if x.dim() != 4:
        raise ValueError(f"Expected argument `volume` of shape [C, X, Y, Z], but got shape {tuple(x.shape)}")
    for name, a in (("affine", geometry.affine), ("original_affine", geometry.original_affine)):
        if not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise ValueError(f"cannot resample: the {name} is singular or not finite: {a.tolist()}")
    src = MetaTensor(x, affine=torch.as_tensor(geometry.affine, dtype=torch.float64))
    out = SpatialResample(mode=mode, padding_mode="zeros", align_corners=False, dtype=torch.float64)(
        src, dst_affine=torch.as_tensor(geometry.original_affine, dtype=torch.float64),
        spatial_size=geometry.original_shape,
    )
    return np.asarray(plain_tensor(out).detach().cpu(), dtype=np.float32)


def map_paths(folder: str | Path, scan_id: str, classes: Sequence[str]) -> dict[str, Path]:
    """The files of one scan's maps: ``{"prediction": ..., <class>: attribution ...}``."""
    stem = record_stem(scan_id)
    base = Path(folder) / stem
    paths = {"prediction": base / f"{stem}_prediction.nii.gz"}
    for cls in classes:
        paths[cls] = base / f"{stem}_attribution_{record_stem(cls)}.nii.gz"
    return paths


def maps_written(folder: str | Path, scan_id: str) -> bool:
    """Whether the scan's maps are complete (its prediction map, written last, exists)."""
    return map_paths(folder, scan_id, [])["prediction"].is_file()


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, *, intent: str | None = None) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    if intent is not None:
        img.header.set_intent(intent)
    return gzip.compress(img.to_bytes(), compresslevel=4)


def write_scan_maps(folder: str | Path, scan_id: str, geometry: ScanGeometry, attribution: np.ndarray | torch.Tensor,
                    prediction: np.ndarray | torch.Tensor, classes: Sequence[str]) -> dict[str, Path]:
    """Write one scan's attribution maps (one per explained class) and prediction in its file's grid.

    Args:
        folder: the maps folder (each scan gets a sub-folder).
        scan_id: the scan's id (file names via :func:`~agg2exp_lightning.audit.scan_records.record_stem`).
        geometry: see :class:`ScanGeometry`.
        attribution: ``[T, *S]`` maps on the model's grid, one per entry of ``classes``.
        prediction: ``[*S]`` label map on the model's grid.
        classes: the ``T`` explained classes' names.

    Returns:
        The written files (as :func:`map_paths`).

    Raises:
        ValueError: shapes that do not fit each other, or a geometry that cannot be resampled.
        OSError: a file cannot be written.
    """
    attr = torch.as_tensor(plain_tensor(attribution)).detach().float().cpu()
    pred = torch.as_tensor(plain_tensor(prediction)).detach().cpu()
    if attr.dim() != 4 or attr.shape[0] != len(classes) or tuple(attr.shape[1:]) != tuple(pred.shape[-3:]):
        raise ValueError(f"Expected attribution [T={len(classes)}, *S] and prediction [*S] on one grid, "
                         f"but got {tuple(attr.shape)} and {tuple(pred.shape)}")
    from agg2exp_lightning.model_loading import ToolkitRunner

    return write_scan_grid_maps(folder, scan_id, ToolkitRunner((1.0, 1.0, 1.0)).to_scan_grid(None, geometry, attr, pred), classes)


def write_scan_grid_maps(folder: str | Path, scan_id: str, maps: Any, classes: Sequence[str]) -> dict[str, Path]:
    """Write one scan's maps already on its file's grid (a :class:`~agg2exp_lightning.model_loading.ScanMaps`).

    Raises:
        ValueError: attribution maps of another count than ``classes`` or another shape than the prediction.
        OSError: a file cannot be written.
    """
    attr = maps.attribution
    if attr is not None and (attr.shape[0] != len(classes) or tuple(attr.shape[1:]) != tuple(maps.prediction.shape)):
        raise ValueError(f"Expected attribution [T={len(classes)}, *O] and prediction [*O] on one grid, "
                         f"but got {tuple(attr.shape)} and {tuple(maps.prediction.shape)}")
    paths = map_paths(folder, scan_id, classes if attr is not None else [])
    for i, cls in enumerate(classes if attr is not None else []):
        atomic_write_bytes(paths[cls], _nifti_bytes(np.asarray(attr[i], dtype=np.float32), maps.affine))
    # the prediction last: its file marks the scan's maps as complete (see maps_written)
    atomic_write_bytes(paths["prediction"], _nifti_bytes(np.asarray(maps.prediction, dtype=np.uint8), maps.affine, intent="label"))
    return paths


#: Colours of the first labels (ITK-SNAP's own palette starts similarly); more labels cycle through a colour map.
_BASE_COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
                 (255, 239, 213), (0, 0, 205), (205, 133, 63), (210, 180, 140), (102, 205, 170), (0, 0, 128),
                 (0, 139, 139), (46, 139, 87), (255, 228, 225), (106, 90, 205), (221, 160, 221), (233, 150, 122)]


def write_colour_table(folder: str | Path, class_names: Sequence[str]) -> Path:
    """An ITK-SNAP label description file naming each label of the prediction maps (also read by MITK)."""
    lines = ["################################################", "# ITK-SnAP Label Description File",
             "# Columns = Index R G B A VIS MSH \"LABEL\"", "################################################"]
    for i, name in enumerate(class_names):
        r, g, b = _BASE_COLOURS[i % len(_BASE_COLOURS)] if i < len(_BASE_COLOURS) else ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        alpha, visible = (0, 0) if i == 0 else (1, 1)
        label = str(name).replace('"', "'")
        lines.append(f"{i:5d} {r:5d} {g:4d} {b:4d} {alpha:8d} {visible:2d} {visible:2d}    \"{label}\"")
    path = Path(folder) / COLOUR_TABLE
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def estimate_map_bytes(images: Sequence[str | Path], n_classes: int) -> int:
    """Upper bound of the maps' size: per scan, its file's voxels x (4 bytes x classes + 1), uncompressed.

    Reads only the headers of NIfTI files (other formats in full, :func:`~agg2exp_lightning.data.reading.read_grid`).
    A file that cannot be read counts as 0 (the audit reports it).
    """
    from agg2exp_lightning.data.reading import read_grid

    total = 0
    for path in images:
        try:
            shape = read_grid(path)[0]
        except Exception:  # the scan's own failure is reported by the audit
            continue
        total += int(np.prod(shape)) * (ATTRIBUTION_BYTES * n_classes + LABEL_BYTES)
    return total


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_room_for_maps(folder: str | Path, needed: int) -> str:
    """Refuse before any work when ``folder`` cannot hold ``needed`` bytes; returns the estimate as text.

    Raises:
        DataError: the folder's file system has less free space than the estimate (both given).
    """
    where = Path(folder)
    probe = where
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    text = f"the maps need up to {_gb(needed)} (uncompressed upper bound); {_gb(free)} free in {probe}"
    if needed > free:
        raise DataError(f"--save-maps: {text}. Free space, choose another --out, or audit without --save-maps")
    return text


class MapWriter:
    """Writes each scan's maps as the audit explains it; a scan whose maps fail is reported by name.

    Args:
        folder: the maps folder (``<out>/maps``).
        class_names: all class names of the model (label ids of the prediction maps).
    """

    def __init__(self, folder: str | Path, class_names: Sequence[str], *, runner: Any = None) -> None:
        self.folder = Path(folder)
        self.class_names = list(class_names)
        self.runner = runner
        self.failed: dict[str, str] = {}

    def __call__(self, scan_id: str, meta: Mapping[str, Any] | ScanGeometry | Any, attribution: Any, prediction: Any,
                 target_ids: Sequence[int], *, index: int | None = None, model: Any = None) -> dict[str, Path] | None:
        """Write the maps of one scan; on failure log a warning naming it, write ``<scan>.maps_failed.json``, return None.

        ``meta``: the preprocessed image (a MetaTensor, with a ``runner``: its
        :meth:`~agg2exp_lightning.model_loading.ScanRunner.to_scan_grid` maps back), else its metadata or geometry.
        """
        stem = record_stem(scan_id)
        failed_file = self.folder / f"{stem}.maps_failed.json"
        classes = [self.class_names[i] for i in target_ids]
        try:
            if self.runner is not None and hasattr(meta, "applied_operations"):
                paths = write_scan_grid_maps(self.folder, scan_id, self.runner.to_scan_grid(model, meta, attribution, prediction), classes)
            else:
                geometry = meta if isinstance(meta, ScanGeometry) else ScanGeometry.from_meta(getattr(meta, "meta", meta), index)
                paths = write_scan_maps(self.folder, scan_id, geometry, attribution, prediction, classes)
        except (DataError, ValueError, RuntimeError, OSError) as err:
            message = f"{type(err).__name__}: {err}"
            self.failed[scan_id] = message
            log.warning("maps of scan %s not written (its audit record is kept): %s", scan_id, message)
            try:
                atomic_write_json(failed_file, {"id": scan_id, "error": message})
            except OSError:
                pass
            return None
        failed_file.unlink(missing_ok=True)
        return paths


def maps_status(folder: str | Path, scan_ids: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``(scans with complete maps, {scan: why its maps are missing})`` for ``scan_ids``."""
    import json

    folder = Path(folder)
    written, missing = [], {}
    for sid in scan_ids:
        if maps_written(folder, sid):
            written.append(sid)
            continue
        failed = folder / f"{record_stem(sid)}.maps_failed.json"
        try:
            missing[sid] = str(json.loads(failed.read_text()).get("error", "unknown error"))
        except (OSError, ValueError, AttributeError):
            missing[sid] = "no maps (the scan was not explained)"
    return written, missing

"""``agg2exp-train predict``: label maps written as NIfTI on each scan's own grid (shape and affine)."""
from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from agg2exp_lightning.utils import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["LabelMapWriter", "to_original_grid"]


def to_original_grid(labels: np.ndarray, affine: np.ndarray, original_affine: np.ndarray,
                     spatial_shape: Sequence[int]) -> np.ndarray:
    """Resample a label map from its grid onto another grid of the same scanner space (nearest neighbour).

    Each voxel of the target grid takes the label of the source voxel nearest to its centre; target voxels
    outside the source grid (e.g. cropped away as outside the body) are background (0). Orientation,
    spacing and crop changes are all undone by the one index map ``inv(affine) @ original_affine``.

    Args:
        labels: ``[X, Y, Z]`` integer labels on the grid of ``affine``.
        affine: ``4x4`` voxel -> world of ``labels``.
        original_affine: ``4x4`` voxel -> world of the target grid.
        spatial_shape: the target grid's shape.

    Returns:
        ``labels``' dtype, shape ``spatial_shape``.

    Example:
        >>> to_original_grid(np.arange(3, dtype=np.uint8).reshape(3, 1, 1), np.eye(4), np.eye(4), (3, 1, 1)).ravel()
        array([0, 1, 2], dtype=uint8)
    """
    from scipy.ndimage import affine_transform

    index_map = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(original_affine, dtype=np.float64)
    return affine_transform(
        np.asarray(labels), index_map[:3, :3], offset=index_map[:3, 3], output_shape=tuple(int(s) for s in spatial_shape),
        order=0, mode="grid-constant", cval=0, prefilter=False,  # a voxel covers +-0.5 around its centre
    ).astype(labels.dtype, copy=False)


class LabelMapWriter(BasePredictionWriter):
    """Writes ``<output_dir>/<subject_id>.nii.gz`` for each predicted scan, on the input image's grid.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` in a subject id become ``_`` in its file name.

    Reads :meth:`SegmentationModule.predict_step <agg2exp_lightning.model.SegmentationModule.predict_step>`'s
    output; a scan whose original grid was not recorded is written on the preprocessed grid (with a warning).
    Every rank writes its own scans; each file is written atomically.

    Args:
        output_dir: folder of the label maps (created).
    """

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.written: list[Path] = []

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: dict[str, Any], batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        import nibabel as nib

        self.output_dir.mkdir(parents=True, exist_ok=True)
        labels = prediction["prediction"].numpy()
        for i, sid in enumerate(prediction["subject_id"]):
            affine = prediction["affine"][i].numpy() if "affine" in prediction else np.eye(4)
            volume, out_affine = labels[i], affine
            if "original_affine" in prediction and "spatial_shape" in prediction:
                out_affine = prediction["original_affine"][i].numpy()
                volume = to_original_grid(labels[i], affine, out_affine, prediction["spatial_shape"][i].tolist())
            else:
                log.warning("scan %s: its original grid was not recorded; label map written on the preprocessed grid", sid)
            image = nib.Nifti1Image(np.ascontiguousarray(volume), out_affine)
            image.header.set_xyzt_units("mm")
            path = self.output_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', str(sid)).lstrip('.') or 'scan'}.nii.gz"
            atomic_write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=6))
            self.written.append(path)

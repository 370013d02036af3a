"""Label maps back on the scan's own grid: MONAI's own transforms forward, ours back, known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agg2exp_lightning.training import to_original_grid


def _scan(shape=(6, 5, 4), seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 9, size=shape).astype(np.uint8)
    # LPS-like voxel axes (x and y flipped), anisotropic voxels, an offset origin
    affine = np.array([[-2.0, 0, 0, 40.0], [0, -1.5, 0, 12.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])
    return labels, affine


def test_reorientation_and_crop_are_undone_exactly():
    from monai.data import MetaTensor
    from monai.transforms import Orientation, SpatialCrop

    labels, affine = _scan()
    x = MetaTensor(torch.from_numpy(labels)[None], affine=torch.as_tensor(affine))
    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(x)
    cropped = SpatialCrop(roi_start=(1, 0, 1), roi_end=(5, 4, 3))(ras)  # as CropForegroundd would
    back = to_original_grid(cropped[0].numpy(), cropped.affine.numpy(), affine, labels.shape)
    assert back.dtype == np.uint8 and back.shape == labels.shape
    inside = back > 0
    # every voxel inside the crop gets its own label back; the ones cropped away are background
    assert np.array_equal(back[inside], labels[inside])
    assert inside.sum() == 4 * 4 * 2
    # which voxels were cropped, independently: RAS index i = 5 - x (x flipped), j = 4 - y, k = z
    x_, y_, z_ = np.meshgrid(np.arange(6), np.arange(5), np.arange(4), indexing="ij")
    kept = (1 <= 5 - x_) & (5 - x_ < 5) & (0 <= 4 - y_) & (4 - y_ < 4) & (1 <= z_) & (z_ < 3)
    assert np.array_equal(inside, kept)


def test_resampled_grid_maps_to_nearest_voxel():
    # a 2 mm grid predicted at 4 mm: each coarse voxel covers 2x2x2 fine voxels, the outer ones at a quarter voxel beyond its centre
    coarse = np.arange(8, dtype=np.uint8).reshape(2, 2, 2) + 1
    fine_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    coarse_affine[:3, 3] = 1.0  # centre of the first coarse voxel = midpoint of fine voxels 0 and 1
    back = to_original_grid(coarse, coarse_affine, fine_affine, (4, 4, 4))
    expected = np.repeat(np.repeat(np.repeat(coarse, 2, 0), 2, 1), 2, 2)
    assert np.array_equal(back, expected)


@pytest.mark.parametrize("bad", [np.zeros((4, 4)), np.diag([0.0, 1, 1, 1])])
def test_singular_affine_is_refused(bad):
    with pytest.raises((np.linalg.LinAlgError, ValueError)):
        to_original_grid(np.zeros((2, 2, 2), np.uint8), bad, np.eye(4), (2, 2, 2))

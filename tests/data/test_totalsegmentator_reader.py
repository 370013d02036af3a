"""Merging per-structure masks into labels, on a hand-made two-structure subject with a known answer."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from agg2exp_lightning.data.subjects import totalsegmentator_records
from agg2exp_lightning.data.totalsegmentator import load_totalsegmentator_subject, merge_structures
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.labels import THORAX_CLASSES

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
MAPPING = {"aorta": ["aorta"], "ribs": ["rib_left_1", "rib_right_1"]}


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture
def subject(tmp_path):
    d = tmp_path / "s0007"
    shape = (6, 6, 6)
    _save(d / "ct.nii.gz", np.full(shape, -1000, np.int16))
    aorta = np.zeros(shape, np.uint8)
    aorta[1:5, 1:5, 1:5] = 1  # 64 voxels
    left = np.zeros(shape, np.uint8)
    left[0, :, :] = 1
    right = np.zeros(shape, np.uint8)
    right[4, 2, 2] = 1  # overlaps the aorta; ribs (37 voxels) are smaller than the aorta, so ribs win there
    _save(d / "segmentations" / "aorta.nii.gz", aorta)
    _save(d / "segmentations" / "rib_left_1.nii.gz", left)
    _save(d / "segmentations" / "rib_right_1.nii.gz", right)
    _save(d / "segmentations" / "liver.nii.gz", np.ones(shape, np.uint8))  # unmapped: ignored
    return d


def test_merge_known_answer_and_overlap_rule(subject):
    ct, labels, affine = load_totalsegmentator_subject(subject, MAPPING)
    aorta, ribs = THORAX_CLASSES.index("aorta"), THORAX_CLASSES.index("ribs")
    assert ct.dtype == np.float32 and np.all(ct == -1000)
    assert np.all(labels[0] == ribs)
    assert labels[4, 2, 2] == ribs  # overlap goes to the smaller merged mask
    assert (labels == aorta).sum() == 64 - 1
    assert set(np.unique(labels)) == {0, aorta, ribs}
    np.testing.assert_allclose(affine, AFFINE)


def test_missing_structure_named_with_subject(subject):
    (subject / "segmentations" / "rib_right_1.nii.gz").unlink()
    with pytest.raises(DataError, match=r"subject s0007, structure 'rib_right_1' \(label 'ribs'\): expected mask file"):
        merge_structures(subject, MAPPING)


def test_non_binary_mask(subject):
    _save(subject / "segmentations" / "aorta.nii.gz", np.full((6, 6, 6), 3, np.uint8))
    with pytest.raises(DataError, match=r"structure 'aorta'.*expected a binary mask with values 0/1, found values 3"):
        load_totalsegmentator_subject(subject, MAPPING)


def test_shape_and_affine_mismatch(subject):
    _save(subject / "segmentations" / "aorta.nii.gz", np.zeros((6, 6, 7), np.uint8))
    with pytest.raises(DataError, match=r"s0007.*shape \(6, 6, 7\) does not match the image's shape \(6, 6, 6\)"):
        load_totalsegmentator_subject(subject, MAPPING)
    _save(subject / "segmentations" / "aorta.nii.gz", np.zeros((6, 6, 6), np.uint8), np.diag([2.0, 4.0, 4.0, 1.0]))
    with pytest.raises(DataError, match="affine does not match the image's affine"):
        load_totalsegmentator_subject(subject, MAPPING)


def test_non_finite_ct(subject):
    _save(subject / "ct.nii.gz", np.full((6, 6, 6), np.nan, np.float32))
    with pytest.raises(DataError, match=r"CT of subject s0007.*NaN or infinite"):
        load_totalsegmentator_subject(subject, MAPPING)


def test_structure_name_not_in_mapping(subject):
    with pytest.raises(DataError, match="names label 'aortta'.*did you mean 'aorta'"):
        merge_structures(subject, {"aortta": ["aorta"]})


def test_missing_meta_csv_warns_and_runs_without_metadata(subject):
    with pytest.warns(UserWarning, match=r"meta\.csv not found: running without metadata"):
        (rec,) = totalsegmentator_records(subject.parent)
    assert rec.subject_id == "s0007" and rec.split in ("train", "val", "test")
    assert rec.metadata == {"image_id": "s0007"}

"""meta.csv, NIfTI and manifest reading: each bad input stops with a message naming file and expectation."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from agg2exp_lightning.data.nifti import check_binary, load_nifti
from agg2exp_lightning.data.subjects import manifest_records, select_split, totalsegmentator_records
from agg2exp_lightning.data.totalsegmentator import META_COLUMNS, read_meta_csv
from agg2exp_lightning.errors import DataError

HEADER = ";".join(META_COLUMNS)


def test_meta_csv_with_bom_is_read(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_bytes(("\ufeff" + HEADER + "\ns0001;55;f;A;ct thorax;train;Siemens;X;120;;\n").encode())
    table = read_meta_csv(p)
    assert list(table.columns) == list(META_COLUMNS)
    assert table.loc["s0001", "gender"] == "f" and table.loc["s0001", "pathology"] == ""


def test_meta_csv_wrong_separator(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_text(HEADER.replace(";", ",") + "\ns0001,55,f,A,ct,train,S,X,120,,\n")
    with pytest.raises(DataError, match=r"meta\.csv: expected semicolon-separated"):
        read_meta_csv(p)


def test_meta_csv_missing_columns(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_text("age;gender\n55;f\n")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['image_id'\]"):
        read_meta_csv(p)


def test_meta_csv_not_utf8(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_bytes(b"image_id;institute\ns0001;Z\xfcrich\n")
    with pytest.raises(DataError, match="expected UTF-8"):
        read_meta_csv(p)


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))


def test_nifti_missing_truncated_and_not_nifti(tmp_path):
    with pytest.raises(DataError, match=r"CT of s1: file .*ct\.nii\.gz does not exist"):
        load_nifti(tmp_path / "ct.nii.gz", what="CT of s1")
    good = tmp_path / "good.nii.gz"
    _save(good, np.zeros((8, 8, 8), np.int16))
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match=r"cannot read .*trunc\.nii\.gz as NIfTI"):
        load_nifti(truncated, what="x")
    text = tmp_path / "text.nii.gz"
    text.write_bytes(gzip.compress(b"hello, not an image"))
    with pytest.raises(DataError, match=r"text\.nii\.gz"):
        load_nifti(text, what="x")
    arr, aff = load_nifti(good)
    assert arr.shape == (8, 8, 8) and aff[0, 0] == 2.0


def test_mask_with_values_other_than_0_1():
    with pytest.raises(DataError, match="expected a binary mask with values 0/1, found values 2"):
        check_binary(np.array([0, 1, 2]), what="m")


def test_manifest_records_and_empty_split(tmp_path):
    _save(tmp_path / "a.nii.gz", np.zeros((8, 8, 8), np.int16))
    _save(tmp_path / "a_seg.nii.gz", np.zeros((8, 8, 8), np.uint8))
    (tmp_path / "m.csv").write_text("image,label,split,sex\na.nii.gz,a_seg.nii.gz,train,f\n")
    (rec,) = manifest_records(tmp_path / "m.csv")
    assert rec.subject_id == "a" and rec.metadata["sex"] == "f" and rec.labels.endswith("a_seg.nii.gz")
    with pytest.raises(DataError, match=r"split 'val' is empty; splits present: \['train'\]"):
        select_split([rec], "val", source=tmp_path / "m.csv")
    (tmp_path / "bad.csv").write_text("path,seg\na.nii.gz,a_seg.nii.gz\n")
    with pytest.raises(DataError, match="expected columns 'image' and 'label'"):
        manifest_records(tmp_path / "bad.csv")


def test_empty_dataset_root(tmp_path):
    with pytest.raises(DataError, match="holds no subject folder"):
        totalsegmentator_records(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        totalsegmentator_records(tmp_path / "missing")

"""Bad data through the public commands: ``train.py`` stops naming every unusable subject and what was
expected, ``audit.py`` reports each broken scan and finishes the others with correct results,
``agg2exp-make-cohort`` refuses bad arguments. Each broken subject is a copy of a clean one with one fault.
"""
from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from agg2exp_lightning.labels import THORAX_CLASSES

TINY_MODEL_ARGS = (  # as tests/conftest.py (this folder is not a package)
    "--model.feature_size=12",
    "--model.depths=[1, 1, 1, 1]",
    "--model.roi_size=[32, 32, 32]",
    '--model.norm_name=["group", {"num_groups": 3}]',
)
NO_MONITORS = ("--config", str(Path(__file__).parents[1] / "configs" / "checkpoints_only.yaml"))
SOURCE = "s0000"  # every broken subject starts as a copy of this one
HEART = 8  # label id of the heart


# -- breaking a subject ------------------------------------------------------------------------------
def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine.copy()


def _save(path: Path, data: np.ndarray, affine: np.ndarray, dtype=None) -> None:
    nib.save(nib.Nifti1Image(data, affine, dtype=dtype), str(path))


def _ct(d: Path) -> Path:
    return d / "ct.nii.gz"


def _mask(d: Path, structure: str = "heart") -> Path:
    return d / "segmentations" / f"{structure}.nii.gz"


def _all_files(d: Path) -> list[Path]:
    return [_ct(d), *sorted((d / "segmentations").glob("*.nii.gz"))]


def _set_ct_voxel(d: Path, value: float) -> None:
    x, a = _load(_ct(d))
    x = x.astype(np.float32)
    x[20, 20, 20] = value
    _save(_ct(d), x, a)


def _retype_ct(d: Path, fn) -> None:
    x, a = _load(_ct(d))
    _save(_ct(d), fn(x), a)


def _retype_mask(d: Path, dtype) -> None:
    x, a = _load(_mask(d))
    _save(_mask(d), x.astype(dtype), a, dtype=dtype)


def _stored_pixdim(d: Path, value: float) -> None:
    """pixdim[1] = value in the stored header bytes of every file, sform off (nibabel would repair it on save)."""
    for p in _all_files(d):
        raw = bytearray(gzip.decompress(p.read_bytes()))
        raw[80:84] = struct.pack("<f", value)  # pixdim[1]
        raw[254:256] = struct.pack("<h", 0)  # sform_code: the affine comes from qform and pixdim
        p.write_bytes(gzip.compress(bytes(raw)))


def _sform(d: Path, affine: np.ndarray) -> None:
    """The same affine (sform only; nibabel cannot write a singular one as qform) in every file."""
    for p in _all_files(d):
        img = nib.load(str(p))
        header = img.header.copy()
        header["qform_code"] = 0
        header.set_sform(affine, code=1)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, header=header), str(p))


def _shift_mask(d: Path) -> None:
    x, a = _load(_mask(d))
    a[0, 3] += 5.0
    _save(_mask(d), x, a, dtype=x.dtype)


def _empty(paths: list[Path]) -> None:
    for p in paths:
        x, a = _load(p)
        _save(p, np.zeros_like(x), a, dtype=x.dtype)


def _thin(d: Path, depth: int = 2) -> None:
    for p in _all_files(d):
        x, a = _load(p)
        _save(p, np.ascontiguousarray(x[:, :, 19 : 19 + depth]), a, dtype=x.dtype)


def _rgb(d: Path) -> None:
    x, a = _load(_ct(d))
    _save(_ct(d), np.zeros(x.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), a)


#: subject -> (fault, what the message must say).
BROKEN = {
    "corrupt_ct": (lambda d: _ct(d).write_bytes(np.random.default_rng(0).bytes(5000)), r"cannot read .*corrupt_ct/ct\.nii\.gz as NIfTI"),
    "truncated_ct": (lambda d: _ct(d).write_bytes(_ct(d).read_bytes()[: len(_ct(d).read_bytes()) // 2]),
                     r"cannot read .*truncated_ct/ct\.nii\.gz as NIfTI"),
    "mask_not_nifti": (lambda d: _mask(d).write_text("not an image\n"), r"structure 'heart'.*cannot read .*heart\.nii\.gz as NIfTI"),
    "missing_ct": (lambda d: _ct(d).unlink(), r"missing_ct/ct\.nii\.gz does not exist"),
    "nan_ct": (lambda d: _set_ct_voxel(d, np.nan), r"nan_ct/ct\.nii\.gz holds 1 NaN or infinite voxels, expected finite"),
    "inf_ct": (lambda d: _set_ct_voxel(d, np.inf), r"inf_ct/ct\.nii\.gz holds 1 NaN or infinite voxels"),
    "nan_mask": (lambda d: _set_mask_nan(d), r"heart\.nii\.gz: expected a binary mask with values 0/1, found values nan"),
    "complex_ct": (lambda d: _retype_ct(d, lambda x: x.astype(np.complex64)), r"complex_ct/ct\.nii\.gz holds voxels of type complex64, expected one real"),
    "binary_ct": (lambda d: _retype_ct(d, lambda x: (x > 0).astype(np.uint8)), r"binary_ct/ct\.nii\.gz holds only the values 0 and 1"),
    "half_mask": (lambda d: _half_mask(d), r"heart\.nii\.gz: expected a binary mask with values 0/1, found values 0\.5"),
    "ct_4d": (lambda d: _retype_ct(d, lambda x: np.stack([x, x], -1)), r"ct_4d/ct\.nii\.gz has shape \(40, 40, 40, 2\), expected a 3D volume"),
    "rgb_ct": (_rgb, r"rgb_ct/ct\.nii\.gz holds voxels of type RGB"),
    "zero_pixdim": (lambda d: _stored_pixdim(d, 0.0), r"zero_pixdim/ct\.nii\.gz has voxel sizes \(header pixdim\) \[0\.0, 8\.0, 8\.0\], expected three positive"),
    "negative_pixdim": (lambda d: _stored_pixdim(d, -8.0), r"negative_pixdim/ct\.nii\.gz has voxel sizes \(header pixdim\) \[-8\.0"),
    "singular_affine": (lambda d: _sform(d, np.diag([8.0, 8.0, 0.0, 1.0])), r"singular_affine/ct\.nii\.gz has a degenerate or non-finite affine"),
    "nan_affine": (lambda d: _sform(d, np.diag([np.nan, 8.0, 8.0, 1.0])), r"nan_affine/ct\.nii\.gz has a degenerate or non-finite affine"),
    "huge_voxels": (lambda d: _sform(d, np.diag([1e6, 1e6, 1e6, 1.0])), r"huge_voxels/ct\.nii\.gz has voxel sizes \[1000000\.0, .*expected at most 100 mm"),
    "shifted_mask": (_shift_mask, r"heart\.nii\.gz: affine does not match the image's affine"),
}


def _set_mask_nan(d: Path) -> None:
    x, a = _load(_mask(d))
    x = x.astype(np.float32)
    x[0, 0, 0] = np.nan
    _save(_mask(d), x, a)


def _half_mask(d: Path) -> None:
    x, a = _load(_mask(d))
    _save(_mask(d), x.astype(np.float32) * 0.5, a)


#: subject -> fault that must be accepted (same image and labels as SOURCE unless said otherwise).
ACCEPTED = {
    "clean": lambda d: None,
    "float64_ct": lambda d: _retype_ct(d, lambda x: x.astype(np.float64)),
    "int64_mask": lambda d: _retype_mask(d, np.int64),
    "uint16_mask": lambda d: _retype_mask(d, np.uint16),
    "empty_heart": lambda d: _empty([_mask(d)]),
    "all_masks_empty": lambda d: _empty(_all_files(d)[1:]),
    "thin_ct": _thin,  # 40 x 40 x 2 voxels
}


def _clone(root: Path, new_id: str, split: str, fault) -> Path:
    """Copy SOURCE to ``new_id`` (with its meta.csv row, under ``split``) and apply ``fault``."""
    shutil.copytree(root / SOURCE, root / new_id)
    meta = root / "meta.csv"
    lines = meta.read_text(encoding="utf-8-sig").splitlines()
    row = next(line for line in lines if line.startswith(f"{SOURCE};")).split(";")
    header = lines[0].split(";")
    row[0], row[header.index("split")] = new_id, split
    meta.write_text("\ufeff" + "\n".join([*lines, ";".join(row)]) + "\n", encoding="utf-8")
    fault(root / new_id)
    return root / new_id


def _resplit(root: Path, split: str) -> None:
    """Move every subject now in the cohort to ``split``."""
    meta = pd.read_csv(root / "meta.csv", sep=";", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    meta["split"] = split
    meta.to_csv(root / "meta.csv", sep=";", index=False, encoding="utf-8-sig")


def _train_args(root: Path, run: Path, *extra: str) -> list[str]:
    return ["demo", f"--data.data_root={root}", "--data.spacing=[8.0, 8.0, 8.0]", "--data.roi_size=[32, 32, 32]",
            *TINY_MODEL_ARGS, *NO_MONITORS, f"--trainer.default_root_dir={run}",
            f"--trainer.logger.init_args.save_dir={run}", *extra]


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sparse_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with output biases that leave only two classes predicted (lung_upper_lobe_left,
    heart): two backward passes per scan instead of nine keep the audit fast, and the 15 classes it never
    predicts are the "class absent from a scan" case."""
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    bias = ckpt["state_dict"]["net.out.conv.conv.bias"]
    keep = torch.zeros_like(bias, dtype=torch.bool)
    keep[[2, HEART]] = True
    bias[~keep] -= 50.0
    path = tmp_path_factory.mktemp("sparse_ckpt") / "sparse.ckpt"
    torch.save(ckpt, path)
    return path


# -- the audit survives ------------------------------------------------------------------------------
def _null_rows(record: dict) -> set[int]:
    return {i for i, row in enumerate(record["mass"]) if all(v is None for v in row)}


def _check_shares(row: list, regions: set[int]) -> None:
    assert {j for j, v in enumerate(row) if v is not None} == regions, row
    assert math.isclose(sum(row[j] for j in regions), 1.0, abs_tol=1e-5), row


def _same(a, b) -> None:
    np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-5, atol=1e-7, equal_nan=True)


@pytest.mark.slow
def test_audit_reports_each_broken_scan_and_finishes_the_others(cohort_copy, sparse_checkpoint, run_cli, tmp_path):
    root = cohort_copy
    _resplit(root, "train")  # the audited split holds only the clones below
    for name, (fault, _) in BROKEN.items():
        _clone(root, name, "test", fault)
    for name, fault in ACCEPTED.items():
        _clone(root, name, "test", fault)
    out = tmp_path / "audit"
    proc = run_cli("audit.py", "--checkpoint", str(sparse_checkpoint), "--data", str(root), "--split", "test", "--method", "vg",
                   "--spacing", "12", "12", "12", "--accelerator", "cpu", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_traceback(proc)

    # every broken scan is reported, with its file and what was expected
    failed = json.loads((out / "failed_scans.json").read_text())
    assert set(failed) == {f"audited:{name}" for name in BROKEN}
    for name, (_, pattern) in BROKEN.items():
        assert re.search(pattern, failed[f"audited:{name}"]), (name, failed[f"audited:{name}"])
        assert failed[f"audited:{name}"].startswith("DataError: ") and name in failed[f"audited:{name}"]
    report = (out / "report.html").read_text()
    assert all(name in report for name in BROKEN)

    # the others are finished, and correct
    frame = pd.read_csv(out / "per_scan.csv")
    assert sorted(frame.patient) == sorted(ACCEPTED)
    rec = {n: json.loads((out / "scans" / f"{n}.json").read_text()) for n in ACCEPTED}
    clean = rec["clean"]
    absent = _null_rows(clean)
    predicted = set(range(len(THORAX_CLASSES))) - absent
    assert predicted and len(absent) >= 10  # the sparse model predicts a few classes, never the others
    for i in predicted:  # shares are defined in predicted regions only (NaN elsewhere), and sum to 1
        _check_shares(clean["mass"][i], predicted)
    # the same image and labels stored with another dtype give the same explanation and Dice
    for name in ("float64_ct", "int64_mask", "uint16_mask"):
        _same(rec[name]["mass"], clean["mass"])
        _same(rec[name]["mean"], clean["mean"])
        _same(rec[name]["dice"], clean["dice"])
    # empty masks: the image (hence the explanation) is unchanged; Dice is undefined (NaN) for a class in
    # neither the labels nor the prediction, 0 for a predicted class without labels, never a made-up number
    for name in ("empty_heart", "all_masks_empty"):
        _same(rec[name]["mass"], clean["mass"])
    for name, gone in (("empty_heart", {HEART}), ("all_masks_empty", set(range(1, len(THORAX_CLASSES))))):
        for i in range(1, len(THORAX_CLASSES)):
            got = rec[name]["dice"][i]
            if i not in gone:
                assert got == clean["dice"][i] or (got is None and clean["dice"][i] is None)
            elif i in absent:
                assert got is None, (name, THORAX_CLASSES[i], got)
            else:
                assert got == 0.0, (name, THORAX_CLASSES[i], got)
    # the 2-voxel-thin scan is padded to the window and explained: shares of its predicted classes sum to 1
    thin = rec["thin_ct"]
    thin_predicted = set(range(len(THORAX_CLASSES))) - _null_rows(thin)
    assert thin_predicted <= predicted and thin_predicted
    for i in thin_predicted:
        _check_shares(thin["mass"][i], thin_predicted)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scans"] == len(ACCEPTED)


# -- training stops ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_stops_naming_every_broken_subject(cohort_copy, run_cli, tmp_path):
    root = cohort_copy
    for name, (fault, _) in BROKEN.items():
        _clone(root, name, "train", fault)
    proc = run_cli("train.py", *_train_args(root, tmp_path / "run", "--trainer.fast_dev_run=true"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    _no_traceback(proc)
    err = proc.stderr[proc.stderr.index("agg2exp-train: error:"):]
    assert f"{len(BROKEN)} of {len(BROKEN) + 6} subjects cannot be used" in err  # 6 clean training subjects
    for name, (_, pattern) in BROKEN.items():
        assert re.search(pattern, err), (name, err)


@pytest.mark.slow
def test_training_accepts_odd_but_valid_data(cohort_copy, run_cli, tmp_path):
    """Other dtypes, empty masks, a 2-voxel-thin scan (padded to the crop), a BOM and extra meta.csv columns."""
    root = cohort_copy
    _resplit(root, "unused")
    for name, fault in ACCEPTED.items():
        _clone(root, name, "train", fault)
    _clone(root, "thin_val", "val", _thin)
    meta = pd.read_csv(root / "meta.csv", sep=";", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    meta["site_notes"] = "extra column"
    meta.to_csv(root / "meta.csv", sep=";", index=False, encoding="utf-8-sig")
    assert (root / "meta.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    # one step on one batch holding every accepted subject, then validation on the thin scan (sliding windows pad it)
    proc = run_cli("train.py", *_train_args(root, tmp_path / "run", "--trainer.fast_dev_run=true", f"--data.batch_size={len(ACCEPTED)}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_traceback(proc)


META_FAULTS = {
    "comma_separated": (lambda t: t.replace(";", ","), r"expected semicolon-separated columns"),
    "no_image_id_column": (lambda t: t.replace("image_id;", "subject;", 1), r"missing required column\(s\) \['image_id'\]"),
    "latin1_bytes": (lambda t: t.replace("SIEMENS", "SIEMENS Zürich"), r"expected UTF-8 text, cannot decode byte"),
    "empty_file": (lambda t: "", r"the file is empty; expected a semicolon-separated header line"),
    "duplicate_image_id": (lambda t: t + t.splitlines()[1] + "\n", r"image_id values repeat: \['s0000'\]"),
    "no_subject_in_train": (lambda t: t.replace(";train;", ";holdout;"), r"split 'train' is empty; splits present: \['holdout', 'test', 'val'\]"),
}


@pytest.mark.parametrize("fault", sorted(META_FAULTS))
def test_training_stops_on_a_malformed_meta_csv(fault, cohort_copy, tmp_path, capsys):
    """In-process through ``agg2exp_lightning.training.main`` (what ``train.py`` runs) to save a start per case."""
    from agg2exp_lightning.training import main

    change, pattern = META_FAULTS[fault]
    meta = cohort_copy / "meta.csv"
    text = change(meta.read_text(encoding="utf-8-sig"))
    meta.write_bytes(text.encode("latin-1" if fault == "latin1_bytes" else "utf-8"))
    assert main(_train_args(cohort_copy, tmp_path / "run", "--trainer.fast_dev_run=true")) == 2
    err = capsys.readouterr().err
    named = cohort_copy if fault == "no_subject_in_train" else meta
    assert f"agg2exp-train: error: {named}: " in err, err
    assert re.search(pattern, err), err


def test_malformed_meta_csv_through_the_train_command(cohort_copy, run_cli, tmp_path):
    """One case as a real process: exit status 2, the message, no traceback."""
    meta = cohort_copy / "meta.csv"
    meta.write_text(meta.read_text(encoding="utf-8-sig").replace(";", ","), encoding="utf-8")
    proc = run_cli("train.py", *_train_args(cohort_copy, tmp_path / "run", "--trainer.fast_dev_run=true"))
    assert proc.returncode == 2 and f"agg2exp-train: error: {meta}: expected semicolon-separated" in proc.stderr, proc.stderr[-3000:]
    _no_traceback(proc)


def test_audit_of_a_split_no_subject_has(cohort_copy, tiny_checkpoint, run_cli, tmp_path):
    proc = run_cli("audit.py", "--checkpoint", str(tiny_checkpoint), "--data", str(cohort_copy), "--split", "holdout",
                   "--method", "vg", "--spacing", "12", "12", "12", "--accelerator", "cpu", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "agg2exp-audit: error:" in proc.stderr and "split 'holdout' is empty; splits present: ['test', 'train', 'val']" in proc.stderr
    _no_traceback(proc)


# -- agg2exp-make-cohort -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-subjects", "-3"], "Expected argument `n_subjects` to be a positive integer, but got -3"),
        (["--shape", "40", "abc", "40"], "argument --shape: invalid int value: 'abc'"),
        (["--shape", "0"], "Expected argument `shape` to be three integers >= 8 (voxels), but got [0, 0, 0]"),
        (["--spacing", "-1"], "Expected argument `spacing` to be a positive number"),
    ],
    ids=["negative_n", "non_numeric_shape", "zero_shape", "negative_spacing"],
)
def test_make_cohort_refuses_bad_arguments(args, message, run_cli, tmp_path):
    proc = run_cli("-m", "agg2exp_lightning.data.synthetic", str(tmp_path / "cohort"), *args, "--quiet")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    _no_traceback(proc)
    assert not (tmp_path / "cohort").exists() or not any((tmp_path / "cohort").iterdir())


@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_make_cohort_refuses_an_output_path_that_is_a_file(where, run_cli, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    root = target if where == "file" else target / "cohort"
    proc = run_cli("-m", "agg2exp_lightning.data.synthetic", str(root), "--n-subjects", "3", "--shape", "16", "--quiet")
    assert proc.returncode == 2 and f"agg2exp-make-cohort: error: cohort root {root}" in proc.stderr, proc.stderr
    _no_traceback(proc)
    assert target.read_text() == "keep me"

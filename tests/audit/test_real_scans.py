"""Audits of scans as they come: NIfTI in LPS, NRRD and DICOM series in one manifest, rows without labels, a bad
scan among good ones, masks in NRRD as extra regions, and maps written back onto each file's own grid.

Known answers: the liver phantom's tangent model is voxel-wise and predicts the labels exactly, so a scan read
in any format gets Dice 1 and keeps each class's attribution in its own region (the tumour's entirely inside a
lesion mask equal to the tumour); a reader that flipped or transposed an axis would move every one of these.
On the real crops, PointwiseNet's share of class c inside the NRRD tumour mask is |pred_c & mask| / |pred_c|,
counted here with numpy from the same preprocessing.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

TESTS = Path(__file__).parents[1]
sys.path.insert(0, str(TESTS / "model_loading"))  # factory_models
sys.path.insert(0, str(TESTS / "data"))  # the DICOM writer of test_reading
from factory_models import tangent_weights  # noqa: E402
from test_reading import write_dicom_series  # noqa: E402

from agg2exp_lightning import THORAX_CLASSES  # noqa: E402
from agg2exp_lightning.data.reading import read_volume  # noqa: E402

from audit_scan_helpers import PointwiseNet  # noqa: E402, I001 - beside this file

REAL = TESTS / "data" / "real_ct"
NAMES = ["background", "liver", "tumour"]
#: Files' grid: LPS, 8 mm; the model's grid the same spacing (whole volumes, no resampling but the reorientation).
AFFINE = np.array([[-8.0, 0, 0, 80.0], [0, -8.0, 0, 60.0], [0, 0, 8.0, -40.0], [0, 0, 0, 1]])


def _phantom(i: int) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels (0 body/air, 1 liver, 2 tumour) of the liver phantom of test_audit_models, 20^3 voxels."""
    g = np.stack(np.meshgrid(*[np.arange(20)] * 3, indexing="ij"))
    rng = np.random.default_rng(i)
    body = ((g - 10) ** 2).sum(0) < 8**2
    liver = body & (np.abs(g[0] - 9 - i % 2) < 4) & (np.abs(g[1] - 10) < 3) & (np.abs(g[2] - 11) < 5)
    tumour = liver & (((g - np.array([9 + i % 2, 10, 11 + i % 3]).reshape(3, 1, 1, 1)) ** 2).sum(0) <= 2)
    ct = np.where(body, 0.0, -1000.0) + 5 * rng.standard_normal(body.shape)
    ct[liver], ct[tumour] = 200.0, 600.0
    return np.round(ct).astype(np.int16), (liver.astype(np.uint8) + tumour.astype(np.uint8))


def _nrrd(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nrrd

    lps = np.diag([-1.0, -1, 1, 1]) @ affine
    nrrd.write(str(path), data, {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3]})


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory) -> tuple[Path, Path]:
    """p0 NIfTI (labelled), p1 NRRD (labelled), p2 DICOM series (labelled, NIfTI labels), p3 NIfTI with an empty
    label, p4 NRRD without a label, p5 a broken NRRD; and a lesion mask (the tumour) per scan in NRRD."""
    pytest.importorskip("pydicom")
    root = tmp_path_factory.mktemp("mixed")
    masks = root / "masks"
    rows = ["image,label,split,scanner"]
    for i in range(5):
        ct, lab = _phantom(i)
        if i in (0, 3):
            nib.save(nib.Nifti1Image(ct, AFFINE), str(root / f"p{i}.nii.gz"))
            image = f"p{i}.nii.gz"
        elif i in (1, 4):
            _nrrd(root / f"p{i}.nrrd", ct, AFFINE)
            image = f"p{i}.nrrd"
        else:
            write_dicom_series(root / f"p{i}", ct, AFFINE, series_uid=f"1.2.3.{i}", series_number=1)
            image = f"p{i}"
        label = ""
        if i == 1:
            _nrrd(root / "p1_label.nrrd", lab, AFFINE)
            label = "p1_label.nrrd"
        elif i in (0, 2):
            nib.save(nib.Nifti1Image(lab, AFFINE), str(root / f"p{i}_label.nii.gz"))
            label = f"p{i}_label.nii.gz"
        rows.append(f"{image},{label},test,{'A' if i % 2 else 'B'}" if i != 4 else f"{image},,test,A")
        (masks / f"p{i}").mkdir(parents=True)
        _nrrd(masks / f"p{i}" / "lesion.nrrd", (lab == 2).astype(np.uint8), AFFINE)
    (root / "p5.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 20 20\n")
    rows.append("p5.nrrd,,test,B")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv", masks


def test_mixed_formats_and_unlabelled_rows_audit_with_known_answers(tmp_path, mixed_manifest):
    from agg2exp_lightning.audit import audit

    manifest, masks = mixed_manifest
    net = torch.nn.Conv3d(1, 3, 1)
    net.load_state_dict(tangent_weights())
    analysis = audit(net, manifest, method="vanilla_gradient", label_map=NAMES, out=tmp_path / "out", spacing=(8, 8, 8),
                     accelerator="cpu", extra_masks=masks)
    out = tmp_path / "out"
    # the bad scan is reported, naming its file and the reader tried; the others finish
    failed = json.loads((out / "failed_scans.json").read_text())
    assert list(failed) == ["audited:p5"] and "p5.nrrd" in failed["audited:p5"] and "NrrdReader" in failed["audited:p5"]
    frame = pd.read_csv(out / "per_scan.csv").set_index("patient").sort_index()
    assert list(frame.index) == ["p0", "p1", "p2", "p3", "p4"] and list(analysis.table.classes) == NAMES
    # Dice 1 where there are labels, in every format; none (NaN) for the rows without
    for a in NAMES:
        np.testing.assert_allclose(frame.loc[["p0", "p1", "p2"], f"{a}_dice"].to_numpy(float), 1.0)
        assert frame.loc[["p3", "p4"], f"{a}_dice"].isna().all()
    # each class's attribution stays in its own region; the tumour's lies entirely in the NRRD lesion mask
    for a in ("liver", "tumour"):
        np.testing.assert_allclose(frame[f"{a}_explanation_in_{a}_mass"].to_numpy(float), 1.0, atol=1e-6)
    np.testing.assert_allclose(frame["tumour_explanation_in_lesion_mass"].to_numpy(float), 1.0, atol=1e-6)
    np.testing.assert_allclose(frame["liver_explanation_in_lesion_mass"].to_numpy(float), 0.0, atol=1e-6)
    report = (out / "report.html").read_text()
    assert "scans without labels" in report and "2 of 5: p3, p4" in report and "p5" in report
    assert "lesion: tumour 1.000" in report  # the class leaning most on the lesion region, with its mean share


@pytest.mark.slow  # one model audit through Trainer.predict, with maps
def test_real_crops_unlabelled_with_a_real_tumour_region_and_maps_on_their_own_grids(tmp_path):
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit
    from agg2exp_lightning.audit.extra_masks import find_extra_masks
    from agg2exp_lightning.audit.maps import map_paths
    from agg2exp_lightning.audit.scan_audit import PerScanTransform
    from agg2exp_lightning.data.subjects import manifest_records
    from agg2exp_lightning.labels import load_structure_mapping

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"image,image_id,split\n{REAL / 'chest_cta_crop.nii.gz'},chest,test\n{REAL / 'lung2_image_crop.nrrd'},lung2,test\n")
    masks = tmp_path / "masks"
    for sid, src, name in (("lung2", "lung2_label_crop.nrrd", "tumour_mask.nrrd"), ("chest", "chest_cta_heart_crop.nii.gz", "heart_ts.nii.gz")):
        (masks / sid).mkdir(parents=True)
        (masks / sid / name).write_bytes((REAL / src).read_bytes())
    spacing = (6.0, 6.0, 6.0)
    out = run_checkpoint_audit(PointwiseNet(), tmp_path / "out", label_map=list(THORAX_CLASSES), data=manifest, method="vg",
                               spacing=spacing, split="test", accelerator="cpu", extra_masks=masks, save_maps=True,
                               protocol="paper")
    frame = pd.read_csv(out.per_scan_csv).set_index("patient")
    assert sorted(frame.index) == ["chest", "lung2"] and not any(c.endswith("_dice") for c in frame.columns)
    # maps: NIfTI with the shape and affine MONAI's LoadImage gives for the original file (NRRD and LPS NIfTI alike)
    from monai.transforms import LoadImage

    for sid, src in (("chest", "chest_cta_crop.nii.gz"), ("lung2", "lung2_image_crop.nrrd")):
        original = LoadImage(image_only=True)(str(REAL / src))
        data, affine = read_volume(REAL / src)
        np.testing.assert_allclose(affine, original.affine.numpy(), atol=1e-6)
        for path in map_paths(out.out_dir / "maps", sid, ["heart"]).values():
            img = nib.load(str(path))
            assert img.shape == tuple(original.shape) == data.shape, (path, img.shape)
            np.testing.assert_allclose(img.affine, original.affine.numpy(), atol=1e-4)
    # the tumour region's shares: PointwiseNet's VG of class c is 2 p_c on its predicted region, so its share in
    # the tumour is |pred_c & tumour| / |pred_c| on the model's grid
    (record,) = [r for r in manifest_records(manifest) if r.subject_id == "lung2"]
    item = PerScanTransform(load_structure_mapping(), len(THORAX_CLASSES), spacing, crop_to_body=False,
                            extra_masks=find_extra_masks(masks, [record], THORAX_CLASSES))(dataclasses.asdict(record))
    tumour = item["extra_masks"].as_tensor()[0].numpy() > 0.5
    assert tumour.sum() > 0
    pred = PointwiseNet()(item["image"].as_tensor()[None]).argmax(1)[0].numpy()
    checked = 0
    for c, name in enumerate(THORAX_CLASSES):
        column = f"{'vertebraes' if name == 'vertebrae' else name}_explanation_in_tumour_mask_mass"
        if (pred == c).any():
            assert frame.loc["lung2", column] == pytest.approx(((pred == c) & tumour).sum() / (pred == c).sum(), abs=1e-6)
            checked += (pred == c).any() and ((pred == c) & tumour).any()
    assert checked >= 1  # at least one class's explanation leans on the tumour

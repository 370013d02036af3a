"""NIfTI maps in the scan's own grid (``--save-maps``): shape and affine of the file, shares against the
original labels, colour table, size check before starting, and a scan whose maps cannot be written."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from agg2exp_lightning import THORAX_CLASSES
from agg2exp_lightning.audit import maps as maps_module
from agg2exp_lightning.audit.checkpoint_audit import make_scan_explainer
from agg2exp_lightning.audit.maps import ScanGeometry, check_room_for_maps, estimate_map_bytes, map_paths, to_original_grid
from agg2exp_lightning.data.subjects import manifest_records
from agg2exp_lightning.errors import DataError

from audit_scan_helpers import POINTS, TinyConvNet  # noqa: I001 - beside this file

#: Model grid of these tests (mm); the files' own voxels are 2 x 3 x 4 mm in LPS order.
SPACING = (3.0, 3.0, 3.0)
SHAPE = (44, 36, 24)
#: Label ids of the blocks: classes whose intensity point lies above the body threshold (so the crop keeps them).
BODY, A, B = 6, 10, 14


def _labels(shift: int) -> np.ndarray:
    """Three asymmetric blocks inside a body (so a flip or transpose would move every share)."""
    lab = np.zeros(SHAPE, np.uint8)
    lab[6:38, 6:30, 4:20] = BODY
    lab[8 + 2 * shift : 24 + 2 * shift, 8:20, 6:14] = A
    lab[26:36, 18:28, 10:18] = B
    return lab


@pytest.fixture(scope="module")
def lps_cohort(tmp_path_factory) -> Path:
    """Three scans stored in LPS with 2 x 3 x 4 mm voxels; HU chosen so the pointwise part predicts the labels."""
    root = tmp_path_factory.mktemp("maps_cohort")
    rows = ["image,label,split"]
    for n in range(3):
        lab = _labels(n)
        affine = np.diag([-2.0, -3.0, 4.0, 1.0])
        affine[:3, 3] = [30.0 + n, 40.0, -20.0]
        hu = POINTS.numpy()[lab] * 2048.0 - 1024.0  # windowed intensity = the class's point
        nib.save(nib.Nifti1Image(hu.astype(np.float32), affine), root / f"s{n}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / f"s{n}_seg.nii.gz")
        rows.append(f"s{n}.nii.gz,s{n}_seg.nii.gz,test")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


class NearlyPointwise(TinyConvNet):
    """PointwiseNet plus a 100x weaker smoothing than TinyConvNet's: predicts the labels, and a little of each
    class's attribution spills into its neighbours (by an amount that differs between scans)."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.scale.mul_(0.01)


def _audit(root: Path, out: Path, **kwargs):
    from agg2exp_lightning.audit.scan_audit import run_scan_audit
    from agg2exp_lightning.labels import load_structure_mapping

    sets = {"audited": manifest_records(root / "manifest.csv")}
    explainer = make_scan_explainer("vanilla_gradient", targets=[BODY, A, B])
    return run_scan_audit(NearlyPointwise(), THORAX_CLASSES, sets, out, explainer=explainer, config={"test": "maps"},
                          spacing=SPACING, mapping=load_structure_mapping(), save_maps=True,
                          trainer_kwargs={"accelerator": "cpu", "devices": 1}, **kwargs)


def _shares(attribution: np.ndarray, labels: np.ndarray, n_regions: int) -> np.ndarray:
    """Mass share of |attribution| per region (written here, independent of the toolkit)."""
    a = np.abs(attribution)
    return np.array([a[labels == r].sum() for r in range(n_regions)]) / a.sum()


@pytest.fixture(scope="module")
def audited(lps_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps_audit") / "out"
    return out, _audit(lps_cohort, out)


def test_maps_have_the_files_grid_and_their_shares_agree_with_the_audit(audited, lps_cohort):
    out, outputs = audited
    for n in range(3):
        sid = f"s{n}"
        original = nib.load(lps_cohort / f"{sid}_seg.nii.gz")
        paths = map_paths(out / "maps", sid, [THORAX_CLASSES[c] for c in (BODY, A, B)])
        assert not map_paths(out / "maps", sid, [THORAX_CLASSES[1]])[THORAX_CLASSES[1]].exists()  # only the explained classes
        record = json.loads((out / "scans" / f"{sid}.json").read_text())
        prediction = nib.load(paths["prediction"])
        assert prediction.shape == SHAPE and np.allclose(prediction.affine, original.affine)
        assert prediction.get_data_dtype() == np.uint8
        labels = np.asarray(original.dataobj)
        pred = np.asarray(prediction.dataobj)
        for cls in (A, B):  # the label map lands on the original labels (borders: interpolated intensities)
            dice = 2 * ((pred == cls) & (labels == cls)).sum() / ((pred == cls).sum() + (labels == cls).sum())
            assert dice > 0.8, (sid, cls, dice)
        for cls in (BODY, A, B):
            amap = nib.load(paths[THORAX_CLASSES[cls]])
            assert amap.shape == SHAPE and np.allclose(amap.affine, original.affine)
            ours = _shares(np.asarray(amap.dataobj), labels, len(THORAX_CLASSES))
            audit_row = np.asarray(record["mass"][(BODY, A, B).index(cls)], dtype=float)
            assert audit_row[cls] > 0.5  # most of c's mass in its own region; the rest spills to neighbours
            # The audit aggregates over the prediction on the model's 3 mm grid, this over the file's own labels: they
            # differ by the interpolation across region borders (intermediate intensities there are predicted as
            # other classes; about 10% of the small blocks' voxels lie within one 3 mm voxel of a border).
            np.testing.assert_allclose(ours, np.nan_to_num(audit_row), atol=0.1)
            if cls == B:  # the tolerance does not hide a wrong orientation: flipped, B's map misses B
                assert _shares(np.asarray(amap.dataobj)[::-1], labels, len(THORAX_CLASSES))[B] < 0.5


def test_colour_table_names_every_label_and_the_report_lists_the_maps(audited):
    out, outputs = audited
    lines = [ln for ln in (out / "maps" / "labels_itksnap.txt").read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == len(THORAX_CLASSES)
    assert lines[2].split()[0] == "2" and lines[2].split('"')[1] == THORAX_CLASSES[2]
    assert "maps (NIfTI" in outputs.report_html.read_text()


def test_to_original_grid_undoes_a_flip_a_crop_and_a_zoom_exactly_for_labels():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 4, size=(8, 6, 4)).astype(np.float32)
    original_affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    # model grid: RAS (x flipped), cropped by 1 voxel on each side of x, same voxel size
    ras = original[::-1][1:-1]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = -2.0 * 6  # voxel 0 of the crop is original voxel 6 (x = -12 mm)
    back = to_original_grid(torch.from_numpy(ras.copy())[None], ScanGeometry(affine, original_affine, (8, 6, 4)), mode="nearest")[0]
    np.testing.assert_array_equal(back[1:-1], original[1:-1])
    assert (back[[0, -1]] == 0).all()  # outside the crop: background


def test_too_little_room_is_refused_before_starting_with_the_estimate(lps_cohort, tmp_path, monkeypatch):
    expected = 3 * int(np.prod(SHAPE)) * (4 * len(THORAX_CLASSES) + 1)
    assert estimate_map_bytes([lps_cohort / f"s{n}.nii.gz" for n in range(3)], len(THORAX_CLASSES)) == expected

    class Tiny:
        free = 1000

    monkeypatch.setattr(maps_module.shutil, "disk_usage", lambda path: Tiny())
    with pytest.raises(DataError, match=r"--save-maps: the maps need up to [0-9.]+ MB .*; 0.0 MB free in"):
        _audit(lps_cohort, tmp_path / "out")
    assert not (tmp_path / "out" / "scans").exists()  # nothing started
    assert "free" in check_room_for_maps(tmp_path, 10)


def test_a_scan_whose_maps_cannot_be_written_is_named_and_the_others_are_written(lps_cohort, tmp_path, monkeypatch, caplog):
    real = maps_module.to_original_grid

    def broken_for_s1(volume, geometry, **kw):
        if geometry.original_affine[0, 3] == 31.0:  # s1's file
            raise RuntimeError("inverse resampling failed")
        return real(volume, geometry, **kw)

    monkeypatch.setattr(maps_module, "to_original_grid", broken_for_s1)
    caplog.set_level(logging.INFO, logger="agg2exp_lightning")
    outputs = _audit(lps_cohort, tmp_path / "out")
    assert "scan s0 written (rank 0: 1 of 3 scans, about" in caplog.text  # progress per scan with the time left
    assert "maps of scan s1 not written" in caplog.text and "inverse resampling failed" in caplog.text
    assert map_paths(tmp_path / "out" / "maps", "s0", [])["prediction"].is_file()
    assert map_paths(tmp_path / "out" / "maps", "s2", [])["prediction"].is_file()
    assert not map_paths(tmp_path / "out" / "maps", "s1", [])["prediction"].exists()
    assert outputs.summary["n_scans"] == 3  # the audit itself kept every scan
    assert "without maps: s1" in outputs.report_html.read_text()

    # the same command again: only the scan without maps is explained again, and now gets them
    monkeypatch.setattr(maps_module, "to_original_grid", real)
    caplog.clear()
    outputs = _audit(lps_cohort, tmp_path / "out")
    assert "1 of 3 scans to explain (2 finished earlier)" in caplog.text
    assert map_paths(tmp_path / "out" / "maps", "s1", [])["prediction"].is_file()
    assert not (tmp_path / "out" / "maps" / "s1.maps_failed.json").exists()
    assert "without maps" not in outputs.report_html.read_text()


def test_three_view_figures_are_drawn_from_the_maps_and_linked_to_them(audited, lps_cohort, caplog):
    from agg2exp_lightning.audit.scan_figures import scan_figures_for_audit

    out, _ = audited
    images = {f"s{n}": lps_cohort / f"s{n}.nii.gz" for n in range(3)}
    index = scan_figures_for_audit(out, images, ["s1", "nope"], THORAX_CLASSES)
    assert "--figures-for: nope is not an audited scan" in caplog.text
    page = index.read_text()
    for cls in (BODY, A, B):
        name = THORAX_CLASSES[cls]
        assert (index.parent / f"s1_{name}.png").is_file()
        assert f'href="../../maps/s1/s1_attribution_{name}.nii.gz"' in page
    assert 'href="../../maps/s1/s1_prediction.nii.gz"' in page and (index.parent / "s1_profile.png").is_file()
    assert not list(index.parent.glob("s0_*.png"))


def test_the_report_links_the_three_view_figures(lps_cohort, tmp_path):
    out = tmp_path / "out"
    outputs = _audit(lps_cohort, out, figures_for=["s1"])
    page = outputs.report_html.read_text()
    assert '<a href="figures/scans/index.html">' in page
    assert (out / "figures" / "scans" / "index.html").is_file()

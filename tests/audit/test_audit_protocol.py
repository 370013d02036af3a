"""``--protocol`` and ``--merge`` through the audit command (table mode), and their bad input."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from agg2exp_lightning.audit.cli import main

sys.path.insert(0, str(Path(__file__).parent))  # audit_scan_helpers


@pytest.fixture(scope="module")
def paper_audit(published_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_audit") / "out"
    assert main(["--from-table", str(published_table), "--out", str(out), "--protocol", "paper", "--merge", "lung", "-q"]) == 0
    return out


def test_summary_figures_and_report_hold_the_protocol_and_the_paper_analyses(paper_audit, published_table):
    summary = json.loads((paper_audit / "summary.json").read_text())
    assert summary["protocol"]["name"] == "paper" and summary["protocol"]["settings"]["empty_regions"] == "zero"
    lobes = ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"]
    assert summary["merged_regions"] == {"lung": lobes} and "lung" in summary["regions"]
    raw = pd.read_csv(published_table)
    expected = raw[[f"aorta_explanation_in_{b}_mass" for b in lobes]].sum(axis=1).mean()
    assert summary["global_roi_importance"]["aorta"]["lung"] == pytest.approx(expected, rel=1e-9)
    assert summary["dependency_graph"]["rule"] == "cumulative" and summary["dependency_graph"]["edges"]
    assert summary["clustering"]["rule"] == "paper" and summary["mean_anomaly_vs_mean_dice"]["n"] == 32
    for name in ("published_dependency_graph", "class_boxplots", "class_clustering", "mean_anomaly_vs_mean_dice"):
        assert (paper_audit / "figures" / f"{name}.png").stat().st_size > 1000
    page = (paper_audit / "report.html").read_text()
    assert 'id="paper-analyses"' in page and "Protocol: paper" in page and "mean forest score vs mean Dice" in page
    assert json.loads((paper_audit / "audit.json").read_text())["config"]["protocol"]["name"] == "paper"


@pytest.mark.parametrize(("argv", "message"), [
    (["--protocol", "papr"], ["`protocol`", "'paper', 'corrected'", "'papr'", "did you mean 'paper'"]),
    (["--merge", "lungs"], ["'lungs'", "did you mean 'lung'"]),
    (["--merge", "lung=lung_upper_lobe_left,lung_lowr_lobe_left"], ["'lung_lowr_lobe_left'", "did you mean 'lung_lower_lobe_left'"]),
])
def test_bad_protocol_or_merge_stops_naming_the_value_and_keeps_what_was_written(paper_audit, published_table, argv, message, capsys):
    before = {p.name: p.read_bytes() for p in paper_audit.rglob("*") if p.is_file()}
    code = main(["--from-table", str(published_table), "--out", str(paper_audit), "-q", *argv])
    err = capsys.readouterr().err
    assert code == 2 and all(m in err for m in message), err
    assert {p.name: p.read_bytes() for p in paper_audit.rglob("*") if p.is_file()} == before


@pytest.mark.slow  # two model audits through Trainer.predict (~20-40 s on a shared 2-core CPU)
def test_model_audit_under_the_paper_protocol_explains_uncropped_volumes_and_merges_regions(tmp_path, scan_cohort):
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from agg2exp_lightning import THORAX_CLASSES
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit
    from agg2exp_lightning.errors import DataError

    from audit_scan_helpers import PointwiseNet

    shapes = {}
    for protocol in ("paper", "corrected"):
        out = run_checkpoint_audit(PointwiseNet(), tmp_path / protocol, label_map=list(THORAX_CLASSES), data=scan_cohort, method="vg",
                                   spacing=(8, 8, 8), split="test", accelerator="cpu", protocol=protocol, merges=["lung", "autochthon"])
        assert out.summary["protocol"]["name"] == protocol and set(out.summary["merged_regions"]) == {"lung", "autochthon"}
        assert json.loads((tmp_path / protocol / "audit.json").read_text())["config"]["protocol"]["name"] == protocol
        (npz,) = (tmp_path / protocol / "scans").glob("*.slices.npz")
        shapes[protocol] = np.load(npz)["image"].shape[1:]
    assert shapes["paper"] == (40, 40) and shapes["corrected"] != (40, 40)  # the cohort's 40^3 volumes, uncropped
    with pytest.raises(DataError, match="'lungg'.*did you mean 'lung'"):
        run_checkpoint_audit(PointwiseNet(), tmp_path / "bad", label_map=list(THORAX_CLASSES), data=scan_cohort, method="vg",
                             spacing=(8, 8, 8), split="test", accelerator="cpu", merges=["lungg"])
    assert not (tmp_path / "bad").exists()


def _mask_folder(root, scan_cohort, sid, *, shape_change=False, shift=False):
    import nibabel as nib
    import numpy as np

    src = nib.load(str(scan_cohort / sid / "segmentations" / "heart.nii.gz"))
    data, affine = np.asarray(src.dataobj), src.affine.copy()
    if shape_change:
        data = data[:, :, :-1]
    if shift:
        affine[0, 3] += 16.0
    (root / sid).mkdir(parents=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(root / sid / "true_heart.nii.gz"))
    return root


@pytest.mark.slow  # one model audit through Trainer.predict
def test_extra_masks_become_regions_with_the_shares_a_numpy_count_gives(tmp_path, scan_cohort):
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from agg2exp_lightning import THORAX_CLASSES
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit
    from agg2exp_lightning.audit.extra_masks import find_extra_masks
    from agg2exp_lightning.audit.scan_audit import PerScanTransform
    from agg2exp_lightning.data.subjects import discover_records, select_split
    from agg2exp_lightning.labels import load_structure_mapping

    from audit_scan_helpers import SPACING, PointwiseNet

    record = select_split(discover_records(scan_cohort), "test")[0]
    masks = _mask_folder(tmp_path / "masks", scan_cohort, record.subject_id)
    out = run_checkpoint_audit(PointwiseNet(), tmp_path / "out", label_map=list(THORAX_CLASSES), data=scan_cohort, method="vg",
                               spacing=SPACING, split="test", accelerator="cpu", extra_masks=masks, merges=["lung"])
    assert out.summary["regions"][-1] == "true_heart"
    frame = pd.read_csv(out.per_scan_csv)
    # independent count: PointwiseNet's VG of class c is 2 p_c on its predicted region, so its share in the
    # mask is |pred_c & mask| / |pred_c|; the mask through the same preprocessing keeps every voxel (inside the body)
    import dataclasses

    item = PerScanTransform(load_structure_mapping(), len(THORAX_CLASSES), SPACING,
                            extra_masks=find_extra_masks(masks, [record], THORAX_CLASSES))(dataclasses.asdict(record))
    mask = item["extra_masks"].as_tensor()[0].numpy() > 0.5
    raw = np.asarray(__import__("nibabel").load(str(scan_cohort / record.subject_id / "segmentations" / "heart.nii.gz")).dataobj)
    assert mask.sum() == raw.sum() > 0
    pred = PointwiseNet()(item["image"].as_tensor()[None]).argmax(1)[0].numpy()
    checked = 0
    for c, name in enumerate(THORAX_CLASSES):
        column = f"{'vertebraes' if name == 'vertebrae' else name}_explanation_in_true_heart_mass"
        if (pred == c).any():
            assert frame.loc[0, column] == pytest.approx(((pred == c) & mask).sum() / (pred == c).sum(), abs=1e-6)
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("bad", ["shape_change", "shift"])
def test_a_mask_off_the_scans_grid_stops_the_audit_naming_the_file(tmp_path, scan_cohort, bad):
    from audit_scan_helpers import PointwiseNet  # noqa: I001 - beside this file

    from agg2exp_lightning import THORAX_CLASSES
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit
    from agg2exp_lightning.data.subjects import discover_records, select_split
    from agg2exp_lightning.errors import DataError

    record = select_split(discover_records(scan_cohort), "test")[0]
    masks = _mask_folder(tmp_path / "masks", scan_cohort, record.subject_id, **{bad: True})
    with pytest.raises(DataError, match=rf"extra mask {masks / record.subject_id / 'true_heart.nii.gz'}.*(shape|affine)"):
        run_checkpoint_audit(PointwiseNet(), tmp_path / "out", label_map=list(THORAX_CLASSES), data=scan_cohort, method="vg",
                             spacing=(8, 8, 8), split="test", accelerator="cpu", extra_masks=masks)
    assert not (tmp_path / "out").exists()

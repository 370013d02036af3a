"""nnU-Net v2 trained-model folders run as nnU-Net's own predictor runs them (known answer).

A small folder is made here with nnU-Net's own fingerprinting and planning on a few synthetic scans, and
two folds of seeded random weights; the audit's prediction map (``--save-maps``) must equal the file
``nnUNetPredictor`` (mirroring off, Gaussian, tile step 0.5, both folds) writes for the same scan.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from agg2exp_lightning.audit.cli import main
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading import load_model

pytest.importorskip("nnunetv2", reason="pip install 'agg2exp-lightning[nnunet]'")

DATASET = "Dataset990_Tiny"
LABELS = {"background": 0, "organ": 1, "lesion": 2}


def _scan(rng: np.random.Generator, shape=(30, 26, 14)) -> tuple[np.ndarray, np.ndarray]:
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(float)
    c = np.array([s / 2 for s in shape]).reshape(3, 1, 1, 1) + rng.integers(-2, 3, (3, 1, 1, 1))
    body = (((g - c) / np.array([12, 10, 6]).reshape(3, 1, 1, 1)) ** 2).sum(0) < 1
    organ = body & ((((g - c) / 5.0) ** 2).sum(0) < 1)
    lesion = organ & ((((g - c - 1) / 2.0) ** 2).sum(0) < 1)
    ct = np.where(body, 30.0, -1000.0) + np.where(organ, 80.0, 0) + np.where(lesion, 60.0, 0) + 20 * rng.standard_normal(shape)
    return ct.astype(np.float32), (organ.astype(np.uint8) + lesion.astype(np.uint8))


@pytest.fixture(scope="module")
def nnunet_folder(tmp_path_factory) -> dict[str, Path]:
    """Raw dataset (4 training cases) planned by nnU-Net; its 3d_fullres folder with folds 0 and 1 of random weights."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("nnunet")
    raw = root / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    (root / "test").mkdir()
    affine = np.array([[-1.4, 0, 0, 20.0], [0, -1.2, 0, 10.0], [0, 0, 2.5, -5.0], [0, 0, 0, 1]])
    for i in range(4):
        ct, lab = _scan(np.random.default_rng(i))
        nib.save(nib.Nifti1Image(ct, affine), raw / "imagesTr" / f"case{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), raw / "labelsTr" / f"case{i}.nii.gz")
    rows = ["image,label,split"]
    for i in range(3):
        ct, lab = _scan(np.random.default_rng(50 + i))
        nib.save(nib.Nifti1Image(ct, affine), root / "test" / f"t{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / "test" / f"t{i}_label.nii.gz")
        rows.append(f"t{i}.nii.gz,t{i}_label.nii.gz,test")
    (root / "test" / "manifest.csv").write_text("\n".join(rows) + "\n")
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 4,
                                                  "file_ending": ".nii.gz"}))
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"), "nnUNet_results": str(root / "res")}
    script = textwrap.dedent("""
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
        extract_fingerprints([990], num_processes=1, check_dataset_integrity=True, show_progress_bar=False, verbose=False)
        plan_experiments([990])
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = json.loads((root / "pre" / DATASET / "nnUNetPlans.json").read_text())
    folder = root / "res" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text((raw / "dataset.json").read_text())
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    for fold in (0, 1):
        torch.manual_seed(fold)
        net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 3, enable_deep_supervision=False)
        for p in net.parameters():  # spread the weights so that the argmax varies within the body
            torch.nn.init.normal_(p, std=0.2 if p.dim() > 1 else 0.05)
        (folder / f"fold_{fold}").mkdir()
        torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 1,
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": json.loads((folder / "dataset.json").read_text())},
                    "inference_allowed_mirroring_axes": (0, 1, 2), "logging": {"train_losses": [np.float64(0.5)]}},
                   folder / f"fold_{fold}" / "checkpoint_final.pth")
    return {"folder": folder, "test": root / "test"}


def _nnunet_predictions(folder: Path, images: list[Path], out: Path) -> None:
    """nnU-Net's own predictor, in a fresh process as a user runs it (mirroring off, Gaussian, tile step 0.5)."""
    script = textwrap.dedent(f"""
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                            device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        p.initialize_from_trained_model_folder({str(folder)!r}, use_folds=(0, 1), checkpoint_name="checkpoint_final.pth")
        p.predict_from_files({[[str(i)] for i in images]!r}, {[str(out / i.name) for i in images]!r}, save_probabilities=False,
                             overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # nnU-Net's planning and predictor in subprocesses and an audit of 3 scans (~60 s on a shared 2-core CPU)
def test_nnunet_folder_prediction_equals_nnunet_predictor(nnunet_folder, tmp_path, capsys):
    import nibabel as nib

    folder, test = nnunet_folder["folder"], nnunet_folder["test"]
    images = sorted(test.glob("t?.nii.gz"))
    _nnunet_predictions(folder, images, tmp_path / "nnunet_out")
    out = tmp_path / "audit"
    assert main(["--model", str(folder), "--manifest", str(test / "manifest.csv"), "--out", str(out), "--method", "vanilla_gradient",
                 "--save-maps", "--reference-split", "none", "--accelerator", "cpu", "-q"]) == 0
    shares = []
    for image in images:
        sid = image.name[: -len(".nii.gz")]
        ours, theirs, ct = (nib.load(p) for p in (out / "maps" / sid / f"{sid}_prediction.nii.gz", tmp_path / "nnunet_out" / image.name, image))
        np.testing.assert_allclose(ours.affine, ct.affine, atol=1e-4)
        a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        assert a.shape == b.shape == ct.shape
        body = np.asarray(ct.dataobj) > -500
        shares.append(float((a[body] == b[body]).mean()))
        assert len(np.unique(b[body])) > 1, "random weights should predict more than one class"
        attribution = nib.load(out / "maps" / sid / f"{sid}_attribution_organ.nii.gz")
        assert attribution.shape == ct.shape and np.isfinite(np.asarray(attribution.dataobj)).all()
    with capsys.disabled():
        print(f"\nnnU-Net folder (2 folds): voxel agreement with nnUNetPredictor over the body: {[round(s, 5) for s in shares]}")
    assert min(shares) >= 0.99
    audit_json = json.loads((out / "audit.json").read_text())["config"]
    assert audit_json["runner"]["runner"] == "nnunetv2" and audit_json["runner"]["use_mirroring"] is False
    assert audit_json["runner"]["folds"] == ["0", "1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == list(LABELS)


@pytest.mark.slow  # the module fixture plans a dataset with nnU-Net (~1-2 min on a shared 2-core CPU)
def test_fold_ensemble_is_the_mean_of_the_folds_logits_and_bad_folders(nnunet_folder, tmp_path):
    folder = nnunet_folder["folder"]
    both, zero, one = (load_model(folder, folds=f) for f in (None, ["0"], ["1"]))
    assert both.kind == "nnunet" and both.class_names == tuple(LABELS)
    x = torch.randn(1, 1, *both.runner.window["roi_size"])
    with torch.no_grad():
        torch.testing.assert_close(both.model(x), (zero.model(x) + one.model(x)) / 2, rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match=r"no fold_3/checkpoint_final.pth; folds present with checkpoint_final.pth: \['0', '1'\]"):
        load_model(folder, folds=["3"])
    with pytest.raises(DataError, match=r"folds present with checkpoint_best.pth: none"):
        load_model(folder, checkpoint_name="checkpoint_best.pth")
    regions = tmp_path / "regions"
    regions.mkdir()
    for f in ("plans.json", "fold_0"):
        (regions / f).symlink_to(folder / f)
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "organ": [1, 2], "lesion": 2}
    dataset["regions_class_order"] = [1, 2]
    (regions / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(DataError, match="region-based") as caught:
        load_model(regions)
    assert "\n" not in str(caught.value)

"""Audits of any model: a MONAI bundle folder, a package.module:function factory, an nn.Module from Python,
and this toolkit's checkpoint with another number of classes; class names from the label map throughout;
bad model inputs through the command line (exit 2, one message).

Known answer: a 1x1x1 convolution whose logits are tangents of x^2 predicts the phantom's labels
exactly (Dice 1) and, being voxel-wise, keeps each class's vanilla-gradient attribution in its own
region (own share 1, every other share 0), whichever way the model is loaded.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agg2exp_lightning.audit import audit
from agg2exp_lightning.audit.cli import main

TESTS = Path(__file__).parents[1]
sys.path.insert(0, str(TESTS / "model_loading"))  # the factory module, importable as factory_models
from factory_models import tangent_weights  # noqa: E402

NAMES = ["background", "liver", "tumour"]
SPACING = ["8", "8", "8"]
FAST = ["--method", "vanilla_gradient", "--spacing", *SPACING, "--accelerator", "cpu", "-q"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """Six 20^3 scans of 8 mm (NIfTI) in a manifest: air, a body sphere, a liver block and a tumour in it."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("liver_phantom")
    rows = ["image,label,split,scanner"]
    g = np.stack(np.meshgrid(*[np.arange(20)] * 3, indexing="ij"))
    for i in range(6):
        rng = np.random.default_rng(i)
        body = ((g - 10) ** 2).sum(0) < 8**2
        liver = body & (np.abs(g[0] - 10) < 4) & (np.abs(g[1] - 9 - i % 2) < 4) & (np.abs(g[2] - 10) < 4)
        tumour = liver & (((g - np.array([10, 9 + i % 2, 10 + i % 3]).reshape(3, 1, 1, 1)) ** 2).sum(0) <= 2)
        ct = np.where(body, 0.0, -1000.0) + 5 * rng.standard_normal(body.shape)
        ct[liver], ct[tumour] = 200.0, 600.0
        label = liver.astype(np.uint8) + tumour.astype(np.uint8)
        affine = np.diag([8.0, 8.0, 8.0, 1.0])
        nib.save(nib.Nifti1Image(ct.astype(np.float32), affine), root / f"p{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"p{i}_label.nii.gz")
        rows.append(f"p{i}.nii.gz,p{i}_label.nii.gz,{'test' if i < 4 else 'train'},{'A' if i % 2 else 'B'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The tangent model as a MONAI bundle folder and as a factory's weights file plus a label map."""
    root = tmp_path_factory.mktemp("sources")
    bundle = root / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps({
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 3, "kernel_size": 1},
        # the toolkit's reading, spacing and HU window, written as a bundle's own preprocessing (which the audit runs)
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [8.0, 8.0, 8.0]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1024, "a_max": 1024, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "select_fn": "$lambda x: x > 0.25",
             "margin": 2, "allow_smaller": True}]},
    }))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {"outputs": {"pred": {
        "num_channels": 3, "channel_def": {str(i): n for i, n in enumerate(NAMES)}}}}}))
    torch.save(tangent_weights(), bundle / "models" / "model.pt")
    torch.save(tangent_weights(), root / "weights.pt")
    (root / "labels.yaml").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(NAMES)))
    return {"bundle": bundle, "weights": root / "weights.pt", "labels": root / "labels.yaml"}


def _own_and_other(frame: pd.DataFrame, classes=NAMES) -> tuple[np.ndarray, np.ndarray]:
    own = [frame[f"{a}_explanation_in_{a}_mass"].to_numpy(float) for a in classes]
    other = [frame[f"{a}_explanation_in_{b}_mass"].to_numpy(float) for a in classes for b in NAMES if a != b]
    return np.concatenate(own), np.concatenate(other)


@pytest.fixture(scope="module")
def bundle_audit(tmp_path_factory, phantom, sources):
    out = tmp_path_factory.mktemp("bundle_audit") / "out"
    assert main(["--model", str(sources["bundle"]), "--manifest", str(phantom), "--out", str(out), *FAST[:2], "--accelerator", "cpu", "-q"]) == 0
    return out


def test_bundle_audit_uses_the_metadata_names_and_gets_the_known_answer(bundle_audit):
    summary = json.loads((bundle_audit / "summary.json").read_text())
    assert summary["classes"] == NAMES and summary["n_scans"] == 4
    frame = pd.read_csv(bundle_audit / "per_scan.csv")
    own, other = _own_and_other(frame)
    np.testing.assert_allclose(own, 1.0, atol=1e-6)
    np.testing.assert_allclose(other, 0.0, atol=1e-6)
    for a in NAMES:  # the tangent model predicts the phantom's labels exactly
        np.testing.assert_allclose(frame[f"{a}_dice"].to_numpy(float), 1.0)
    config = json.loads((bundle_audit / "audit.json").read_text())["config"]
    assert config["mode"] == "bundle" and config["spacing"] == [8.0, 8.0, 8.0]  # the bundle's Spacingd
    assert config["roi_size"] is None  # no inferer in the bundle: whole volumes
    report = (bundle_audit / "report.html").read_text()
    assert "tumour" in report and "aorta" not in report  # the label map's names, nothing of the thorax


def test_factory_cli_and_python_module_give_the_bundle_results(tmp_path, phantom, sources, bundle_audit):
    reference = pd.read_csv(bundle_audit / "per_scan.csv")
    out = tmp_path / "factory"
    argv = ["--model", "factory_models:build_tangent", "--weights", str(sources["weights"]), "--label-map", str(sources["labels"]),
            "--manifest", str(phantom), "--out", str(out), *FAST]
    assert main(argv) == 0
    # the same numbers up to floating-point rounding (a score of 3e-16 on one path is written as 0 on another)
    pd.testing.assert_frame_equal(pd.read_csv(out / "per_scan.csv"), reference, check_dtype=False, atol=1e-9)
    # the same weights as an nn.Module from Python, names as a list
    net = torch.nn.Conv3d(1, 3, 1)
    net.load_state_dict(tangent_weights())
    analysis = audit(net, phantom, method="vanilla_gradient", label_map=NAMES, out=tmp_path / "py", spacing=(8, 8, 8), accelerator="cpu")
    assert list(analysis.table.classes) == NAMES
    pd.testing.assert_frame_equal(analysis.per_scan_frame().reset_index(drop=True), reference, check_dtype=False, atol=1e-9)


def test_targets_reference_split_and_analysis_object(tmp_path, phantom, sources):
    analysis = audit(sources["bundle"], phantom, method="vg", reference="train", targets=["tumour", "liver"],
                     out=tmp_path / "out", accelerator="cpu")
    assert list(analysis.table.classes) == ["liver", "tumour"] and list(analysis.table.regions) == NAMES  # channel order
    assert analysis.fitted_on_reference
    own, other = _own_and_other(analysis.per_scan_frame(), ["liver", "tumour"])
    np.testing.assert_allclose(own, 1.0, atol=1e-6)
    np.testing.assert_allclose(other, 0.0, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out" / "reference_scans").glob("*.json")) == ["p4.json", "p5.json"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["per_class"]) == ["liver", "tumour"]


@pytest.mark.slow
def test_toolkit_checkpoint_with_three_named_classes(tmp_path, phantom):
    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(num_classes=3, class_names=NAMES, feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32),
                                norm_name=("group", {"num_groups": 3}), sw_batch_size=1)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"spacing": [8.0, 8.0, 8.0]}}, tmp_path / "m.ckpt")
    analysis = audit(tmp_path / "m.ckpt", phantom, method="vg", out=tmp_path / "out", accelerator="cpu")
    assert list(analysis.table.classes) == NAMES and len(analysis.table) == 4
    mass = analysis.table.mass  # [N, T, R]: each explained class's shares over the regions sum to 1 where defined
    sums = np.nansum(mass, axis=2)
    assert np.allclose(sums[np.isfinite(mass).all(axis=2)], 1.0, atol=1e-6)
    config = json.loads((tmp_path / "out" / "audit.json").read_text())["config"]
    assert config["spacing"] == [8.0, 8.0, 8.0] and config["roi_size"] == [32, 32, 32]  # both from the checkpoint


# -- bad model inputs through the command line --------------------------------------------------
def test_bad_model_inputs_exit_2_with_one_message(tmp_path, phantom, sources, capsys):
    base = ["--manifest", str(phantom), "--out", str(tmp_path / "out"), *FAST]
    cases = [
        (["--model", "no_such_pkg_xyz.nets:build"], "module 'no_such_pkg_xyz.nets' cannot be imported"),
        (["--model", "factory_models:not_a_module"], "returned str, expected a torch.nn.Module"),
        (["--model", "factory_models:build_tangent", "--weights", str(sources["weights"]), "--label-map", str(sources["labels"]),
          "--targets", "tumor"], "`--targets`: the model has no class 'tumor'"),
        (["--model", str(sources["bundle"]), "--label-map", str(tmp_path / "two.json")], "names 2 classes, but MONAI bundle"),
        (["--model", "factory_models:build", "--weights", str(sources["weights"])],
         "head.weight"),  # the tangent weights are a bare Conv3d's: the factory's model has head.*
        (["--model", str(sources["bundle"]), "--method-option", "smoothgrad.n_samples=3"], "this audit runs 'vanilla_gradient'"),
    ]
    (tmp_path / "two.json").write_text(json.dumps(["background", "liver"]))
    for extra, message in cases:
        assert main([*extra, *base]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("agg2exp-audit: error: ") and message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_factory_that_cannot_be_imported_via_audit_py(tmp_path, phantom):
    proc = subprocess.run([sys.executable, str(TESTS.parent / "audit.py"), "--model", "no_such_pkg_xyz:build", "--manifest", str(phantom),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "model factory 'no_such_pkg_xyz:build': module 'no_such_pkg_xyz' cannot be imported" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_table_of_another_model_with_a_label_map(tmp_path):
    """--from-table with --label-map: a liver/tumour table parses with those names (without the map only
    the names of the thorax labels are recognised)."""
    rng = np.random.default_rng(0)
    shares = rng.dirichlet([4.0, 2.0, 1.0], size=(24, 3))  # [scan, class, region]
    frame = pd.DataFrame({"patient": [f"s{i}" for i in range(24)]})
    for a, cls in enumerate(NAMES):
        for b, region in enumerate(NAMES):
            frame[f"{cls}_explanation_in_{region}_mass"] = shares[:, a, b]
        frame[f"{cls}_dice"] = rng.uniform(0.5, 1.0, 24)
    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "labels.json").write_text(json.dumps({n: i for i, n in enumerate(NAMES)}))
    assert main(["--from-table", str(tmp_path / "t.csv"), "--label-map", str(tmp_path / "labels.json"), "--out", str(tmp_path / "out"), "-q"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["classes"] == NAMES and list(summary["per_class"]) == NAMES
    share = summary["global_roi_importance"]["tumour"]["liver"]  # mean share, as the table holds it
    assert share == pytest.approx(shares[:, 2, 1].mean())
    # without the map only the thorax names are known: of this table, just the background is analysed
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out2"), "-q"]) == 0
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["classes"] == ["background"]

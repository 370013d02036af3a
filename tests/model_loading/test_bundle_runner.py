"""MONAI model-zoo bundles run as ``python -m monai.bundle run`` runs them (known answer).

The two bundles' configs in ``shared/bundles`` (as published) get seeded random weights saved where their
``checkpointloader`` looks; on small synthetic scans, the audit's prediction map (``--save-maps``) must
equal the file monai's own runner writes for the same scan. Random weights make the argmax a
fine-grained function of the exact input, so any difference in reading, orientation, resampling,
intensity window, windows, blending or inversion shows.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agg2exp_lightning.audit.cli import main
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading import load_model, parse_overrides

BUNDLES = Path(__file__).parents[2] / ".." / "shared" / "bundles"
#: The test's overrides, beside the bundle's own config: data paths, and workers off (monai's runner only).
RUNNER_ONLY = {"dataloader#num_workers": 0}
#: Test speed: windows of 32^3 instead of 96^3 (the scans are about 30 x 22 x 20 voxels after resampling, so
#: the windows still overlap and pad as in a full-size run) for both bundles.
SPLEEN_OVERRIDES = {"inferer#roi_size": [32, 32, 32]}
#: swin_unetr_btcv_segmentation's network_def without ``img_size`` (SwinUNETR no longer takes it) and with
#: feature size 12 instead of 48 (test speed), windows of 64^3 (its bottleneck needs more than one voxel).
SWIN_OVERRIDES = {"network_def": {"_target_": "SwinUNETR", "spatial_dims": 3, "in_channels": 1, "out_channels": 14,
                                  "feature_size": 12, "use_checkpoint": False},
                  "inferer#roi_size": [64, 64, 64]}


def _need(name: str) -> Path:
    folder = BUNDLES / name
    if not (folder / "configs" / "inference.json").is_file():
        pytest.skip(f"bundle configs not found at {folder.resolve()} (shared/ must sit beside the repository)")
    return folder


def _scans(folder: Path, n: int = 3) -> list[Path]:
    """``n`` small CTs (HU) in LPS-like orientation with anisotropic voxels: air, a body, two organs."""
    import nibabel as nib

    (folder / "imagesTs").mkdir(parents=True)
    paths = []
    g = np.stack(np.meshgrid(*[np.arange(s) for s in (34, 30, 16)], indexing="ij")).astype(float)
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        c = np.array([17 + i, 15, 8]).reshape(3, 1, 1, 1)
        body = (((g - c) / np.array([14, 12, 7]).reshape(3, 1, 1, 1)) ** 2).sum(0) < 1
        organ = (((g - c - np.array([4, 2, 0]).reshape(3, 1, 1, 1)) / 5.0) ** 2).sum(0) < 1
        ct = np.where(body, 40.0, -1000.0) + np.where(organ, 90.0, 0.0) + 30 * rng.standard_normal(body.shape)
        affine = np.array([[-1.3, 0, 0, 40.0], [0, -1.1, 0, 30.0], [0, 0, 2.6, -20.0], [0, 0, 0, 1]])
        path = folder / "imagesTs" / f"scan{i}.nii.gz"
        nib.save(nib.Nifti1Image(ct.astype(np.float32), affine), path)
        paths.append(path)
    (folder / "manifest.csv").write_text("image,label,split\n" + "".join(f"imagesTs/{p.name},,test\n" for p in paths))
    return paths


def _bundle_with_random_weights(tmp: Path, name: str, overrides: dict) -> Path:
    """The bundle's configs copied, its network given seeded random weights at its checkpointloader's path."""
    from monai.bundle import ConfigParser

    bundle = tmp / name
    shutil.copytree(_need(name) / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    for k, v in overrides.items():
        parser[k] = v
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    for p in net.parameters():  # default inits give near-constant outputs; spread them so the argmax varies
        torch.nn.init.normal_(p, std=0.2 if p.dim() > 1 else 0.05)
    path = Path(parser.get_parsed_content("checkpointloader#load_path"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return bundle


def _monai_bundle_run(bundle: Path, data: Path, out: Path, overrides: dict) -> None:
    args = {"bundle_root": str(bundle), "dataset_dir": str(data), "output_dir": str(out), **RUNNER_ONLY, **overrides}
    (out.parent / f"{out.name}_args.json").write_text(json.dumps(args))
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
                           "--meta_file", str(bundle / "configs" / "metadata.json"), "--args_file", str(out.parent / f"{out.name}_args.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _agreement(audit_out: Path, monai_out: Path, scans: list[Path]) -> list[float]:
    """Per scan: the share of body voxels (HU > -500) where the audit's prediction map equals monai's."""
    import nibabel as nib

    shares = []
    for scan in scans:
        sid = scan.name[: -len(".nii.gz")]
        ours = nib.load(audit_out / "maps" / sid / f"{sid}_prediction.nii.gz")
        theirs = nib.load(monai_out / sid / f"{sid}_trans.nii.gz")
        ct = nib.load(scan)
        np.testing.assert_allclose(ours.affine, ct.affine, atol=1e-4)  # the scan's own grid
        np.testing.assert_allclose(theirs.affine, ct.affine, atol=1e-4)
        a, b = np.asarray(ours.dataobj), np.rint(np.asarray(theirs.dataobj)).astype(np.uint8)
        assert a.shape == b.shape == ct.shape
        body = np.asarray(ct.dataobj) > -500
        shares.append(float((a[body] == b[body]).mean()))
        assert len(np.unique(b[body])) > 1, "random weights should predict more than one class"
    return shares


def _audit(bundle: Path, data: Path, out: Path, overrides: dict, *extra: str) -> None:
    argv = ["--model", str(bundle), "--manifest", str(data / "manifest.csv"), "--out", str(out), "--method", "vanilla_gradient",
            "--save-maps", "--reference-split", "none", "--accelerator", "cpu", "-q", *extra]
    for k, v in overrides.items():
        argv += ["--bundle-override", f"{k}={json.dumps(v)}"]
    assert main(argv) == 0


@pytest.mark.slow  # monai's runner in a subprocess and an audit of 3 scans (~40 s on a shared 2-core CPU)
def test_spleen_bundle_prediction_equals_monai_bundle_run(tmp_path, capsys):
    bundle = _bundle_with_random_weights(tmp_path, "spleen_ct_segmentation", SPLEEN_OVERRIDES)
    scans = _scans(tmp_path / "data")
    _monai_bundle_run(bundle, tmp_path / "data", tmp_path / "monai_out", SPLEEN_OVERRIDES)
    _audit(bundle, tmp_path / "data", tmp_path / "audit", SPLEEN_OVERRIDES)
    shares = _agreement(tmp_path / "audit", tmp_path / "monai_out", scans)
    with capsys.disabled():
        print(f"\nspleen_ct_segmentation: voxel agreement with monai.bundle run over the body: {[round(s, 5) for s in shares]}")
    assert min(shares) >= 0.99
    config = json.loads((tmp_path / "audit" / "audit.json").read_text())["config"]
    assert config["runner"]["runner"] == "monai.bundle" and config["runner"]["window"]["roi_size"] == [32, 32, 32]
    assert config["spacing"] == [1.5, 1.5, 2.0] and config["mode"] == "bundle"


@pytest.mark.slow  # as above, with SwinUNETR (feature size 12) and ITKReader
def test_swin_bundle_with_itk_reader_prediction_equals_monai_bundle_run(tmp_path, capsys):
    pytest.importorskip("itk", reason="the bundle reads scans with ITKReader (pip install 'agg2exp-lightning[itk]')")
    bundle = _bundle_with_random_weights(tmp_path, "swin_unetr_btcv_segmentation", SWIN_OVERRIDES)
    scans = _scans(tmp_path / "data")
    _monai_bundle_run(bundle, tmp_path / "data", tmp_path / "monai_out", SWIN_OVERRIDES)
    _audit(bundle, tmp_path / "data", tmp_path / "audit", SWIN_OVERRIDES, "--targets", "spleen", "Liver")
    shares = _agreement(tmp_path / "audit", tmp_path / "monai_out", scans)
    with capsys.disabled():
        print(f"\nswin_unetr_btcv_segmentation: voxel agreement with monai.bundle run over the body: {[round(s, 5) for s in shares]}")
    assert min(shares) >= 0.99
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert "Left Kideny" in summary["classes"] or "Liver" in summary["classes"]


def test_config_that_no_longer_builds_names_entry_error_and_fix(tmp_path):
    """swin_unetr_btcv_segmentation as published passes img_size, which SwinUNETR no longer takes."""
    bundle = tmp_path / "swin"
    shutil.copytree(_need("swin_unetr_btcv_segmentation") / "configs", bundle / "configs")
    with pytest.raises(DataError) as caught:
        load_model(bundle)
    message = str(caught.value)
    assert "\n" not in message and "'network_def'" in message and "img_size" in message and "--bundle-override" in message
    fix = message.split("--bundle-override ", 1)[1].strip().strip("'")
    parsed = parse_overrides([fix])
    assert parsed["network_def"]["feature_size"] == 48 and "img_size" not in parsed["network_def"]
    # with the suggested override it builds, and then the weights are the next thing missing: their expected path
    with pytest.raises(DataError, match=r"bundle weights .*does not exist") as missing:
        load_model(bundle, bundle_overrides=[fix])
    assert str(bundle / "models" / "model.pt") in str(missing.value)


def test_missing_weights_and_missing_package_are_one_line_each(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "spleen"
    shutil.copytree(_need("spleen_ct_segmentation") / "configs", bundle / "configs")
    data = tmp_path / "data"
    _scans(data, n=1)
    assert main(["--model", str(bundle), "--manifest", str(data / "manifest.csv"), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bundle / "models" / "model.pt") in err and "checkpointloader" in err
    assert not (tmp_path / "out").exists()
    # the @-named weights file of other zoo bundles: the path comes from the checkpointloader's expression
    over = ["checkpointloader#load_path=$@bundle_root + '/models/model_lowres.pt'"]
    with pytest.raises(DataError, match=r"model_lowres\.pt does not exist"):
        load_model(bundle, bundle_overrides=over)
    # a reader whose package is not installed (itk for ITKReader): named, with the extra that brings it
    import monai.data.image_reader as readers
    from monai.utils import optional_import

    monkeypatch.setattr(readers, "itk", optional_import("itk", version="999")[0])  # as MONAI sees a missing itk
    monkeypatch.setattr(readers, "has_itk", False)
    over = ["preprocessing#transforms#0#reader=ITKReader"]
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    assert main(["--model", str(bundle), "--manifest", str(data / "manifest.csv"), "--out", str(tmp_path / "out2"), "-q",
                 "--bundle-override", over[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'itk'" in err and "agg2exp-lightning[itk]" in err, err


# one scan through the method comparison's faithfulness, sensitivity and timing passes (~22 s on a shared 2-core CPU)
def test_method_comparison_runs_the_bundle_through_its_own_preprocessing(tmp_path):
    from agg2exp_lightning.evaluation.cli import run_comparison
    from agg2exp_lightning.evaluation.compare import ComparisonSettings

    bundle = _bundle_with_random_weights(tmp_path, "spleen_ct_segmentation", SPLEEN_OVERRIDES)
    _scans(tmp_path / "data", n=1)
    frame = run_comparison(str(bundle), tmp_path / "data" / "manifest.csv", tmp_path / "out", methods=["vanilla_gradient"],
                           targets=["spleen"], device="cpu", progress=False, source_options={"bundle_overrides": SPLEEN_OVERRIDES},
                           settings=ComparisonSettings(n_runs=2, subset_size=50, noise_samples=1))
    assert list(frame["subject_id"]) == ["scan0"] and np.isfinite(frame["complexity"]).all()
    config = json.loads((tmp_path / "out" / "settings.json").read_text())["config"]
    assert config["roi_size"] == [32, 32, 32] and config["overlap"] == 0.5  # the bundle's inferer (roi by override)
    runner = config["context"]["runner"]
    assert runner["runner"] == "monai.bundle" and runner["overrides"] == SPLEEN_OVERRIDES
    with pytest.raises(DataError, match="--spacing: .* runs its own preprocessing"):
        run_comparison(str(bundle), tmp_path / "data" / "manifest.csv", tmp_path / "out2", methods=["vanilla_gradient"], spacing=(2, 2, 2),
                       device="cpu", progress=False, source_options={"bundle_overrides": SPLEEN_OVERRIDES})

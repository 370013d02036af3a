"""Scan-by-scan audits through Trainer.predict: known answers, failures, resume after a kill, DDP."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from agg2exp_lightning import NUM_CLASSES, THORAX_CLASSES
from agg2exp_lightning.audit.scan_audit import PerScanTransform
from agg2exp_lightning.data.subjects import discover_records
from agg2exp_lightning.labels import load_structure_mapping

from audit_scan_helpers import SPACING, PointwiseNet, TinyConvNet, audit, gradient_explainer  # noqa: I001 - beside this file

HERE = Path(__file__).parent


def _own_and_other(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    own, other = [], []
    for a in ("background", "aorta", "heart", "trachea", "vertebraes", "ribs"):
        for b in ("background", "aorta", "heart", "trachea", "vertebraes", "ribs"):
            (own if a == b else other).append(frame[f"{a}_explanation_in_{b}_mass"].to_numpy())
    return np.concatenate(own), np.concatenate(other)


@pytest.fixture(scope="module")
def records(scan_cohort):
    return discover_records(scan_cohort)


@pytest.fixture(scope="module")
def conv_audit(tmp_path_factory, records):
    out = tmp_path_factory.mktemp("conv") / "out"
    return out, audit(out, TinyConvNet(), {"audited": records[:4]})


def test_pointwise_model_keeps_every_class_in_its_own_region(tmp_path, records):
    outputs = audit(tmp_path / "out", PointwiseNet(), {"audited": records[:3], "reference": records[4:6]})
    assert outputs.summary["anomaly"]["fitted_on"] == "reference scans"
    assert sorted(p.name for p in (tmp_path / "out" / "reference_scans").glob("*.json")) == [f"{r.subject_id}.json" for r in records[4:6]]
    frame = pd.read_csv(outputs.per_scan_csv)
    assert list(frame.patient) == [r.subject_id for r in records[:3]]
    own, other = _own_and_other(frame)
    assert np.isfinite(own).sum() >= 12
    np.testing.assert_allclose(own[np.isfinite(own)], 1.0, atol=1e-5)
    np.testing.assert_allclose(other[np.isfinite(other)], 0.0, atol=1e-6)
    # Dice against an independent computation (scikit-learn F1 = Dice) on the same preprocessing
    item = PerScanTransform(load_structure_mapping(), NUM_CLASSES, SPACING)(dataclasses.asdict(records[0]))
    pred = PointwiseNet()(item["image"].as_tensor()[None]).argmax(1)[0].flatten().numpy()
    label = item["label"].as_tensor()[0].flatten().long().numpy()
    expected = f1_score(label, pred, labels=range(NUM_CLASSES), average=None, zero_division=np.nan)
    got = frame.loc[0, [f"{'vertebraes' if c == 'vertebrae' else c}_dice" for c in THORAX_CLASSES]].to_numpy(float)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert {"age", "gender", "institute", "scanner_model"} <= set(frame.columns)
    assert not {"image", "label", "labels", "split"} & set(frame.columns)
    assert (tmp_path / "out" / "scans" / f"{records[0].subject_id}.slices.npz").is_file()


def test_conv_model_audit_outputs(conv_audit):
    out, outputs = conv_audit
    frame = pd.read_csv(outputs.per_scan_csv)
    mass = frame[[c for c in frame.columns if c.startswith("heart_explanation_in_") and c.endswith("_mass")]].to_numpy()
    np.testing.assert_allclose(mass.sum(1), 1.0, atol=1e-5)
    own, _ = _own_and_other(frame)
    assert (own[np.isfinite(own)] < 0.999).all() and np.isfinite(own).sum() >= 16  # the convolution spreads attribution beyond the own region
    assert json.loads((out / "failed_scans.json").read_text()) == {}
    n_cases = len(list((out / "figures" / "cases").glob("case_*.png")))
    scored = [c for c, ends in outputs.summary["extreme_cases"].items() if ends["most_anomalous"]]
    assert n_cases == len(scored) >= 5  # one figure per class with anomaly scores
    assert outputs.report_html.read_text().count("on the slice with the most attribution mass</figcaption>") == n_cases


def test_failing_scans_are_reported_and_the_others_finish(tmp_path, records):
    # scan 1 cannot be loaded; the explainer fails on its 2nd call, i.e. on scan 2 (one process, in order)
    broken = dataclasses.replace(records[1], image=str(tmp_path / "missing.nii.gz"), labels=str(tmp_path / "nowhere"))
    calls = []

    def explainer(model, image):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("explainer exploded")
        return gradient_explainer(model, image)

    outputs = audit(tmp_path / "out", TinyConvNet(), {"audited": [records[0], broken, records[2], records[3]]}, explainer=explainer)
    failed = json.loads((tmp_path / "out" / "failed_scans.json").read_text())
    assert sorted(failed) == sorted([f"audited:{broken.subject_id}", f"audited:{records[2].subject_id}"])
    assert "RuntimeError: explainer exploded" == failed[f"audited:{records[2].subject_id}"]
    assert "nowhere" in failed[f"audited:{broken.subject_id}"] or "missing.nii.gz" in failed[f"audited:{broken.subject_id}"]
    frame = pd.read_csv(outputs.per_scan_csv)
    assert list(frame.patient) == [records[0].subject_id, records[3].subject_id]
    assert broken.subject_id in outputs.report_html.read_text()
    assert len(calls) == 3


SCRIPT = """
import logging, sys, time
sys.path.insert(0, {helpers!r})
from audit_scan_helpers import TinyConvNet, audit, gradient_explainer
from agg2exp_lightning.data.subjects import discover_records

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
records = discover_records({cohort!r})[:4]
calls = []

def sleepy(model, image):  # sleeps on its 3rd scan, so the test can kill the audit there
    calls.append(1)
    if len(calls) == 3:
        time.sleep(600)
    return gradient_explainer(model, image)

if sys.argv[1] == "ddp":
    audit({out!r}, TinyConvNet(), {{"audited": records}}, trainer_kwargs={{"accelerator": "cpu", "devices": 2, "strategy": "ddp"}})
else:
    audit({out!r}, TinyConvNet(), {{"audited": records}}, explainer=sleepy)
"""


def _script(tmp_path: Path, cohort: Path, out: Path) -> Path:
    path = tmp_path / "run_audit.py"
    path.write_text(SCRIPT.format(helpers=str(HERE), cohort=str(cohort), out=str(out)))
    return path


def _per_scan(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).set_index("patient").sort_index()


@pytest.mark.slow
def test_killed_audit_resumes_without_redoing_finished_scans(tmp_path, scan_cohort, records, conv_audit):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(_script(tmp_path, scan_cohort, out)), "kill"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "scans").glob("s*[0-9].json"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the audit did not finish two scans in time"
            time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the process this test started
        proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "scans").glob("s*[0-9].json")}
    assert len(finished) == 2 and not (out / "report.html").exists()
    assert not list((out / "scans").glob(".*.tmp"))  # no half-written records left behind
    outputs = audit(out, TinyConvNet(), {"audited": records[:4]})
    assert {p.name: p.stat().st_mtime_ns for p in (out / "scans").glob("s*[0-9].json") if p.name in finished} == finished
    pd.testing.assert_frame_equal(_per_scan(outputs.per_scan_csv), _per_scan(conv_audit[1].per_scan_csv))


@pytest.mark.slow
def test_two_ddp_processes_give_the_results_of_one(tmp_path, scan_cohort, conv_audit):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(_script(tmp_path, scan_cohort, out)), "ddp"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0:" in proc.stderr and "rank 1:" in proc.stderr  # both processes explained scans
    pd.testing.assert_frame_equal(_per_scan(out / "per_scan.csv"), _per_scan(conv_audit[1].per_scan_csv), rtol=1e-6)
    assert json.loads((out / "summary.json").read_text())["n_scans"] == 4


def test_explain_engine_agrees_with_the_reference_gradient(tmp_path, records, conv_audit):
    from agg2exp_lightning.audit.checkpoint_audit import make_scan_explainer

    outputs = audit(tmp_path / "out", TinyConvNet(), {"audited": records[:4]}, explainer=make_scan_explainer("vanilla_gradient"))
    ours, reference = _per_scan(outputs.per_scan_csv), _per_scan(conv_audit[1].per_scan_csv)
    cols = [c for c in reference.columns if c.endswith(("_mass", "_mean", "_dice"))]
    ours_v, ref_v = ours[cols].to_numpy(float), reference[cols].to_numpy(float)
    # the engine leaves shares in regions absent from a scan undefined (NaN); the reference says 0
    absent = np.isnan(ours_v) & (ref_v == 0) & np.array([c.endswith("_mass") for c in cols])
    assert absent.any()
    np.testing.assert_allclose(np.where(absent, 0.0, ours_v), ref_v, rtol=1e-4, atol=1e-7)
    # ... and the anomaly scores, which read absent regions as 0, agree
    scores = [c for c in reference.columns if c.endswith("_anomaly_score")]
    np.testing.assert_allclose(ours[scores].to_numpy(float), reference[scores].to_numpy(float), rtol=1e-4, atol=1e-6)


def _tiny_swin_checkpoint(path: Path) -> Path:
    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32), norm_name=("group", {"num_groups": 3}))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.mark.slow
def test_checkpoint_cli_on_a_tiny_swin_unetr(tmp_path, scan_cohort):
    from agg2exp_lightning.audit.cli import main

    ckpt = _tiny_swin_checkpoint(tmp_path / "tiny.ckpt")
    args = ["--checkpoint", str(ckpt), "--data", str(scan_cohort), "--split", "test", "--method", "vg", "--spacing", "12", "12", "12",
            "--accelerator", "cpu", "--out", str(tmp_path / "out"), "-q"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_scans"] == 1 and summary["classes"] == list(THORAX_CLASSES)
    frame = pd.read_csv(tmp_path / "out" / "per_scan.csv")
    for a in ("background", "aorta", "vertebraes"):
        shares = frame[[c for c in frame.columns if c.startswith(f"{a}_explanation_in_") and c.endswith("_mass")]].to_numpy()
        if np.isfinite(shares).all():
            np.testing.assert_allclose(shares.sum(1), 1.0, atol=1e-6)
    config = json.loads((tmp_path / "out" / "audit.json").read_text())["config"]
    assert config["roi_size"] == [32, 32, 32] and config["method"] == "vg"
    assert config["precision"] == {"asked": "auto", "used": "fp32"}  # the suite pins auto to fp32 (tests/conftest.py)
    assert "fp32 (asked auto: AGG2EXP_AUTO_PRECISION=fp32 pins" in (tmp_path / "out" / "report.html").read_text()
    assert main(args) == 0  # finished: resumes without explaining again


def test_checkpoint_cli_bad_inputs(tmp_path, scan_cohort, capsys):
    from agg2exp_lightning.audit.cli import main

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Path("x")}, evil)  # not loadable with weights_only
    base = ["--data", str(scan_cohort), "--out", str(tmp_path / "out"), "--accelerator", "cpu"]
    assert main(["--checkpoint", str(evil), *base]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    ckpt = _tiny_swin_checkpoint(tmp_path / "tiny.ckpt")
    assert main(["--checkpoint", str(ckpt), *base, "--method", "sg", "--method-option", "n_step=3"]) == 2
    assert "['n_step'] not accepted by method 'smoothgrad'" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), *base, "--split", "holdout"]) == 2
    assert "split 'holdout' is empty" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_audit_matches_the_cpu_audit(tmp_path, records, conv_audit):
    outputs = audit(tmp_path / "out", TinyConvNet(), {"audited": records[:4]}, trainer_kwargs={"accelerator": "gpu", "devices": 1})
    ours, reference = _per_scan(outputs.per_scan_csv), _per_scan(conv_audit[1].per_scan_csv)
    cols = [c for c in reference.columns if c.endswith(("_mass", "_mean", "_dice"))]
    np.testing.assert_allclose(ours[cols].to_numpy(float), reference[cols].to_numpy(float), rtol=1e-4, atol=1e-6)


def test_records_hold_the_prediction_and_attribution_evidence(tmp_path, records):
    from scipy import ndimage

    from agg2exp_lightning.audit.checkpoint_audit import make_scan_explainer
    from agg2exp_lightning.data.transforms import BODY_THRESHOLD
    from agg2exp_lightning.explain import explain

    out = tmp_path / "out"
    audit(out, PointwiseNet(), {"audited": records[:1]}, explainer=make_scan_explainer("vanilla_gradient"))
    rec = json.loads((out / "scans" / f"{records[0].subject_id}.json").read_text())
    ev = rec["evidence"]
    # independent: the model's softmax and argmax on the same preprocessing, scipy's labelling, explain's maps
    item = PerScanTransform(load_structure_mapping(), NUM_CLASSES, SPACING)(dataclasses.asdict(records[0]))
    image = item["image"].as_tensor()[None].float()
    logits = PointwiseNet()(image)[0].double()
    p, pred = torch.softmax(logits, 0), logits.argmax(0)
    maps = explain(PointwiseNet(), image, method="vanilla_gradient").attributions.abs().double()
    body = image[0, 0] > BODY_THRESHOLD
    full = ndimage.generate_binary_structure(3, 3)
    for i, name in enumerate(rec["classes"]):
        c = THORAX_CLASSES.index(name) if name in THORAX_CLASSES else i
        m = pred == c
        if not m.any():
            assert ev["prediction"]["volume_ml"][i] is None  # not predicted: left out, never 0
            continue
        assert ev["prediction"]["volume_ml"][i] == pytest.approx(int(m.sum()) * 8 * 8 * 8 / 1000)
        assert ev["prediction"]["components"][i] == ndimage.label(m.numpy(), full)[1]
        assert ev["prediction"]["confidence"][i] == pytest.approx(p.max(0).values[m].mean().item(), rel=1e-5)
        assert ev["prediction"]["entropy"][i] == pytest.approx((-(p * p.clamp_min(1e-300).log()).sum(0))[m].mean().item(), rel=1e-4, abs=1e-9)
        assert ev["attribution"]["mass"][i] == pytest.approx(maps[i].sum().item(), rel=1e-5)
        if maps[i].sum() > 0:
            assert ev["attribution"]["outside_body"][i] == pytest.approx((maps[i][~body].sum() / maps[i].sum()).item(), abs=1e-6)

"""The audit command end to end on the published table, and its errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agg2exp_lightning.audit.cli import main

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def published_audit(tmp_path_factory, published_table):
    out = tmp_path_factory.mktemp("audit") / "out"
    assert main(["--from-table", str(published_table), "--out", str(out), "-q"]) == 0
    return published_table, out


def test_outputs_of_the_published_table(published_audit):
    table, out = published_audit
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scans"] == 32 and len(summary["per_class"]) == 17 and "vertebrae" in summary["per_class"]
    assert summary["anomaly"]["fitted_on"] == "audited scans"
    raw = pd.read_csv(table)
    per_scan = pd.read_csv(out / "per_scan.csv")
    assert list(per_scan.columns[: raw.shape[1]]) == list(raw.columns)  # published naming and order
    np.testing.assert_allclose(per_scan[raw.columns[1:]].to_numpy(float), raw[raw.columns[1:]].to_numpy(float), rtol=1e-9)
    assert {"vertebraes_anomaly_score", "vertebraes_outlier", "any_class_outlier"} <= set(per_scan.columns)
    for c, v in summary["per_class"].items():
        col = "vertebraes" if c == "vertebrae" else c
        assert v["n_outliers"] == int(per_scan[f"{col}_outlier"].sum())
    assert summary["anomaly"]["n_outlier_scans"] == int(per_scan["any_class_outlier"].sum())
    assert summary["global_roi_importance"]["heart"]["heart"] == pytest.approx(raw["heart_explanation_in_heart_mass"].mean())
    assert sorted(p.name for p in (out / "figures").iterdir()) == [  # the toolkit's figures and the paper's (issue 12)
        "anomaly_vs_dice.png", "class_boxplots.png", "class_clustering.png", "dependency_graph.png", "importance_heatmap.png",
        "mean_anomaly_vs_mean_dice.png", "published_dependency_graph.png", "share_distributions.png"]


def test_rerun_resumes_and_another_config_is_refused(published_audit, capsys):
    table, out = published_audit
    before = (out / "summary.json").read_text()
    assert main(["--from-table", str(table), "--out", str(out), "-q"]) == 0
    assert (out / "summary.json").read_text() == before
    assert main(["--from-table", str(table), "--out", str(out), "--random-state", "7", "-q"]) == 2
    assert "another audit (differs in: random_state)" in capsys.readouterr().err


def test_bad_table_names_the_missing_columns_and_leaves_out_untouched(tmp_path, make_frame, capsys):
    make_frame(5).drop(columns=["heart_explanation_in_aorta_mass"]).to_csv(tmp_path / "t.csv", index=False)
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")]) == 2
    assert "heart_explanation_in_aorta_mass" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_audit_script_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "audit.py"), "--from-table", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "none.csv does not exist" in proc.stderr


def test_reference_table_and_metadata_options(tmp_path, make_frame):
    frame = make_frame(30, 3, seed=4)
    frame.drop(columns=["scanner", "age", "sex"]).to_csv(tmp_path / "t.csv", index=False)
    frame[["patient", "scanner"]].to_csv(tmp_path / "meta.tsv", sep="\t", index=False)
    make_frame(40, 0, seed=5).to_csv(tmp_path / "ref.csv", index=False)
    args = ["--from-table", str(tmp_path / "t.csv"), "--metadata", str(tmp_path / "meta.tsv"), "--reference-table", str(tmp_path / "ref.csv")]
    assert main([*args, "--out", str(tmp_path / "out"), "-q"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["anomaly"]["fitted_on"] == "reference scans" and set(summary["anomaly"]["n_reference"].values()) == {40}
    assert {b["column"] for b in summary["bias_tests"]} == {"scanner"}

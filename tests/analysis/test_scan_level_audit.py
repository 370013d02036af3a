"""The calibrated scan-level score through the cohort analysis, summary.json, per_scan.csv, report.html and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from agg2exp_lightning.analysis.cohort import analyze_cohort
from agg2exp_lightning.analysis.report import render_report
from agg2exp_lightning.analysis.tables import parse_explanation_table
from agg2exp_lightning.audit.cli import main


@pytest.fixture(scope="module")
def planted_analysis(make_frame):
    reference = parse_explanation_table(make_frame(40, 0, seed=21))
    frame = make_frame(34, 6, seed=22)
    frame["site"] = "one site"  # a metadata column with one group
    frame["scanner"] = ["A", "B"] * 17 + ["C"] * 6  # scanner C holds exactly the planted scans
    return analyze_cohort(parse_explanation_table(frame), reference, n_bootstrap=50)


def test_summary_worklist_and_per_scan_columns(planted_analysis):
    a = planted_analysis
    s = json.loads(json.dumps(a.summary(), allow_nan=False))
    block = s["scan_anomaly"]
    assert block["reference"] == "reference scans" and block["n_reference"] == 40 and block["n_folds"] == 5
    assert block["expected_false_positive_rate"] == pytest.approx(2 / 41) and block["n_flagged"] >= 6
    planted = {f"s{i:04d}" for i in range(34, 40)}
    top = [row["id"] for row in s["worklist"][:6]]
    assert set(top) == planted and len(s["worklist"]) >= 10
    first = s["worklist"][0]
    assert first["flagged"] and first["rank"] == 1 and first["classes"][0]["regions"]
    assert first["why"].startswith(first["classes"][0]["class"] + " (per-class p ")
    assert "reference median" in first["why"] and " 0 points" not in first["why"]
    per_scan = a.per_scan_frame()
    assert {"scan_anomaly_score", "scan_anomaly_p", "scan_flagged", "scan_rank", "heart_anomaly_p"} <= set(per_scan.columns)
    ranked = per_scan.sort_values("scan_rank")
    assert list(ranked["patient"][:6]) == top
    np.testing.assert_array_equal(per_scan["scan_flagged"], a.scan.flagged)


def test_score_tests_and_outlier_tests_are_two_bh_families_and_a_one_group_column_reported(planted_analysis):
    s = planted_analysis.summary()
    for family in ("bias_tests", "score_tests"):
        np.testing.assert_allclose([t["q"] for t in s[family]], false_discovery_control([t["p"] for t in s[family]]))  # scipy's BH
    assert len(s["bias_tests"]) > len(s["score_tests"]) > 1  # a joint family would give other q-values
    scanner = next(t for t in s["score_tests"] if t["column"] == "scanner")
    assert scanner["q"] < 0.05 and scanner["detail"].startswith("highest scores: C ")
    skipped = {t["column"]: t["reason"] for t in s["score_tests_skipped"]}
    assert "fewer than 2 distinct values" in skipped["site"]
    assert {t["column"] for t in s["score_tests"]} == {"scanner", "age", "age (binned)", "sex"}


def test_report_shows_the_worklist_and_the_score_tests(planted_analysis):
    s = planted_analysis.summary()
    s["worklist"][0]["id"] = "<script>x</script>"
    page = render_report(s, {}, inputs={"table": "t.csv"})
    assert "Scans to look at first" in page and "expected false-positive rate on clean scans" in page
    assert "Does the scan-level score differ between groups?" in page
    assert "<script>x" not in page and "&lt;script&gt;x" in page


def test_too_small_reference_falls_back_and_says_so(make_frame):
    reference = parse_explanation_table(make_frame(6, 0, seed=1))
    a = analyze_cohort(parse_explanation_table(make_frame(20, 2, seed=2)), reference, n_bootstrap=0)
    notes = a.summary()["scan_anomaly"]["notes"]
    assert a.scan is not None and a.scan.self_reference
    assert "the reference set has 6 scans, fewer than the 10" in notes[0]
    small = analyze_cohort(parse_explanation_table(make_frame(7, 0, seed=3)), n_bootstrap=0)
    s = small.summary()
    assert small.scan is None and s["worklist"] == [] and "n_flagged" not in s["scan_anomaly"]
    assert "scan-level score skipped: 7 audited scans" in s["scan_anomaly"]["notes"][0]
    assert "scan-level score skipped" in render_report(s, {}, inputs={})


def test_contamination_sets_the_flag_and_is_validated(make_frame):
    table = parse_explanation_table(make_frame(40, 0, seed=4))
    loose = analyze_cohort(table, n_bootstrap=0, contamination=0.5)
    assert loose.scan.contamination == 0.5 and 0.4 <= loose.scan.flagged.mean() <= 0.5
    with pytest.raises(ValueError, match="contamination"):
        analyze_cohort(table, n_bootstrap=0, contamination=0.0)


@pytest.mark.parametrize("value", ["0", "0.6", "-1", "nan"])
def test_cli_refuses_contamination_outside_the_interval(tmp_path, make_frame, capsys, value):
    make_frame(12).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(SystemExit) as exc:
        main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--contamination", value])
    assert exc.value.code == 2
    assert "--contamination must be a number in (0, 0.5]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_table_audit_writes_the_scan_level_outputs(tmp_path, make_frame):
    make_frame(30, 3, seed=9).to_csv(tmp_path / "t.csv", index=False)
    make_frame(30, 0, seed=10).to_csv(tmp_path / "ref.csv", index=False)
    out = tmp_path / "out"
    assert main(["--from-table", str(tmp_path / "t.csv"), "--reference-table", str(tmp_path / "ref.csv"),
                 "--out", str(out), "--contamination", "0.1", "-q"]) == 0
    s = json.loads((out / "summary.json").read_text())
    per_scan = pd.read_csv(out / "per_scan.csv")
    assert s["scan_anomaly"]["contamination"] == 0.1 and s["scan_anomaly"]["n_flagged"] == int(per_scan["scan_flagged"].sum())
    assert {"s0030", "s0031", "s0032"} <= set(per_scan.loc[per_scan["scan_flagged"], "patient"])
    assert "Scans to look at first" in (out / "report.html").read_text()

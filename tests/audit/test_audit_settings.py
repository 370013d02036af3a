"""AuditSettings (built and checked once, fingerprinted, from a file or flags) and the detector seam
(--detector, recorded in the outputs; the calibration does not care which detector runs).

Known answers: the Local Outlier Factor detector's per-class scores and outliers equal scikit-learn's
``-decision_function`` / ``predict == -1`` of a ``LocalOutlierFactor(novelty=True)`` fitted on the same
rows; a registered toy detector (distance to the reference mean) runs through the cross-fitting and the
conformal calibration, whose promised false-positive rate does not depend on the detector.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agg2exp_lightning.analysis.anomaly import class_anomaly_scores, scan_anomaly_scores
from agg2exp_lightning.analysis.detectors import DETECTORS, DetectorSpec, register_detector
from agg2exp_lightning.audit.cli import build_parser, main, settings_from_arguments
from agg2exp_lightning.audit_settings import AuditSettings, SettingError


def test_settings_are_checked_once_with_the_field_named():
    s = AuditSettings(method="SG", method_options={"n_samples": 3}, spacing=[8, 8, 8], reference_split="none", merges=["lung"])
    assert (s.method, s.method_name, s.spacing, s.reference_split, s.merges) == ("SG", "smoothgrad", (8.0, 8.0, 8.0), None, ("lung",))
    for bad, field in [({"contamination": 0.7}, "contamination"), ({"detector": "lof"}, "detector"), ({"method": "sgg"}, "method"),
                       ({"method_options": {"n_step": 3}}, "method_options"), ({"n_dependencies": 0}, "n_dependencies"),
                       ({"spacing": (1, 2)}, "spacing"), ({"protocol": "papr"}, "protocol")]:
        with pytest.raises(SettingError) as err:
            AuditSettings(**bad)
        assert err.value.field == field
    with pytest.raises(ValueError, match="unknown setting 'contaminaton'.*did you mean 'contamination'"):
        AuditSettings.build(None, contaminaton=0.1)
    assert AuditSettings.build(s) is s  # an object already checked is passed on as it is


def test_settings_file_and_flags_given_win(tmp_path):
    (tmp_path / "s.yaml").write_text("contamination: 0.2\ndetector: local_outlier_factor\nn_extremes: 2\nmethod: ig\n")
    assert AuditSettings.from_file(tmp_path / "s.yaml").n_extremes == 2
    parser = build_parser()
    argv = ["--from-table", "t.csv", "--out", "o", "--settings", str(tmp_path / "s.yaml"), "--contamination", "0.1",
            "--method-option", "n_steps=3"]
    from agg2exp_lightning.audit.cli import _given_flags

    s = settings_from_arguments(parser.parse_args(argv), _given_flags(argv))
    assert (s.contamination, s.detector, s.n_extremes, s.method_name, s.method_options) == (
        0.1, "local_outlier_factor", 2, "integrated_gradients", {"n_steps": 3})
    (tmp_path / "bad.json").write_text(json.dumps({"n_dependecies": 3}))
    with pytest.raises(ValueError, match=r"bad.json: unknown setting 'n_dependecies'.*did you mean 'n_dependencies'"):
        AuditSettings.from_file(tmp_path / "bad.json")


def test_local_outlier_factor_agrees_with_scikit_learn():
    from sklearn.neighbors import LocalOutlierFactor

    rng = np.random.default_rng(0)
    ref, aud = rng.dirichlet(np.ones(4) * 20, size=(30, 1)), rng.dirichlet(np.ones(4) * 5, size=(8, 1))
    res = class_anomaly_scores(aud, ["a"], ref, detector="local_outlier_factor")
    lof = LocalOutlierFactor(novelty=True).fit(np.round(ref[:, 0], 12))
    np.testing.assert_allclose(res.scores[:, 0], -lof.decision_function(np.round(aud[:, 0], 12)), rtol=1e-12)
    np.testing.assert_array_equal(res.outliers[:, 0], lof.predict(np.round(aud[:, 0], 12)) == -1)
    forest = class_anomaly_scores(aud, ["a"], ref)
    assert not np.allclose(forest.scores, res.scores)  # the detector really changed


class MeanDistance:
    """Toy detector: distance to the reference mean, less the largest reference distance (above 0 = outlier)."""

    def fit(self, x):
        self.mean = x.mean(0)
        self.edge = np.linalg.norm(x - self.mean, axis=1).max()
        return self

    def score(self, x):
        return np.linalg.norm(x - self.mean, axis=1) - self.edge


def test_a_registered_detector_runs_through_cross_fitting_and_calibration():
    register_detector(DetectorSpec("mean_distance", "mean-distance detectors", "MeanDistance", lambda seed: MeanDistance()))
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_detector(DETECTORS["mean_distance"])
        rng = np.random.default_rng(1)
        rates = []
        for seed in range(20):
            res = scan_anomaly_scores(rng.dirichlet(np.ones(4) * 20, size=(50, 2)), ["a", "b"], rng.dirichlet(np.ones(4) * 20, size=(39, 2)),
                                      contamination=0.1, random_state=seed, detector="mean_distance")
            rates.append(res.flagged.mean())
        assert res.expected_fpr == pytest.approx(4 / 40)
        assert np.mean(rates) == pytest.approx(0.1, abs=0.04)  # clean scans flagged at the promised rate
        far = np.tile(np.array([0.97, 0.01, 0.01, 0.01]), (1, 2, 1))
        planted = scan_anomaly_scores(far, ["a", "b"], rng.dirichlet(np.ones(4) * 20, size=(39, 2)), contamination=0.1, detector="mean_distance")
        assert planted.flagged.all()
    finally:
        DETECTORS.pop("mean_distance")


def test_detector_flag_is_recorded_and_fingerprinted(tmp_path, make_frame, capsys):
    make_frame(24, 2, seed=4).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "out"
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(out), "--detector", "local_outlier_factor", "-q"]) == 0
    config = json.loads((out / "audit.json").read_text())["config"]
    assert config["detector"] == "local_outlier_factor" and config["contamination"] == 0.05
    summary = json.loads((out / "summary.json").read_text())
    assert summary["anomaly"]["method"] == "LocalOutlierFactor" and summary["anomaly"]["detector"] == "local_outlier_factor"
    assert summary["anomaly"]["score_detector"] == "robust_distance" and "robust distance score" in summary["scan_anomaly"]["method"]
    report = (out / "report.html").read_text()
    assert "Local Outlier Factor models fitted on" in report and "one Local Outlier Factor model per class" in report
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(out), "-q"]) == 2
    assert "differs in: detector" in capsys.readouterr().err
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o2"), "--detector", "lof"]) == 2
    assert "`detector` to be one of ['isolation_forest', 'local_outlier_factor', 'robust_distance'], but got 'lof'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a number out of range: as argparse reports it
        main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o2"), "--dependencies", "0"])
    assert "--dependencies must be a positive integer, but got 0" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_score_detector_and_tail_flags_are_recorded_fingerprinted_and_checked(tmp_path, make_frame, capsys):
    make_frame(24, 2, seed=4).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "out"
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(out), "--score-detector", "local_outlier_factor", "-q"]) == 0
    assert json.loads((out / "audit.json").read_text())["config"]["score_detector"] == "local_outlier_factor"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["anomaly"]["score_detector"] == "local_outlier_factor" and summary["anomaly"]["detector"] == "isolation_forest"
    assert "Local Outlier Factor model score" in summary["scan_anomaly"]["method"]
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(out), "-q"]) == 2
    assert "differs in: score_detector" in capsys.readouterr().err
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o2"), "--score-detector", "robust"]) == 2
    assert "`score_detector` to be one of" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o3"), "--score-tail", "conformal", "-q"]) == 0
    assert json.loads((tmp_path / "o3" / "audit.json").read_text())["config"]["score_tail"] == "conformal"
    summary = json.loads((tmp_path / "o3" / "summary.json").read_text())
    assert summary["anomaly"]["score_tail"] == "conformal" and "exponential tail" not in summary["scan_anomaly"]["method"]
    assert "exponential tail" in json.loads((out / "summary.json").read_text())["scan_anomaly"]["method"]  # the default
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o4"), "--score-tail", "pareto"]) == 2
    assert "`score_tail` to be one of ['exponential', 'conformal'], but got 'pareto'" in capsys.readouterr().err


def test_analyze_cohort_takes_the_settings_whole(make_frame):
    from agg2exp_lightning.analysis.cohort import analyze_cohort
    from agg2exp_lightning.analysis.tables import parse_explanation_table

    table = parse_explanation_table(make_frame(24, 0, seed=5))
    settings = AuditSettings(contamination=0.25, n_extremes=1, n_bootstrap=0, detector="local_outlier_factor")
    a = analyze_cohort(table, None, settings)
    b = analyze_cohort(table, contamination=0.25, n_extremes=1, n_bootstrap=0, detector="local_outlier_factor")
    np.testing.assert_array_equal(a.scan.score, b.scan.score)
    assert a.scan.contamination == 0.25 and a.detector == "local_outlier_factor" and a.extremes.groupby(["class", "end"]).size().max() == 1


def test_checkpoint_audit_fingerprints_the_settings(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_audit_unchanged import NAMES, _model, _phantom

    from agg2exp_lightning.audit import audit

    work = tmp_path / "data"
    work.mkdir()
    manifest = _phantom(work, n=4)
    audit(_model(), manifest, method="vg", label_map=NAMES, spacing=(8, 8, 8), out=tmp_path / "out", accelerator="cpu",
          detector="local_outlier_factor", contamination=0.2)
    config = json.loads((tmp_path / "out" / "audit.json").read_text())["config"]
    assert {k: config[k] for k in ("method", "detector", "contamination", "n_extremes")} == {
        "method": "vg", "detector": "local_outlier_factor", "contamination": 0.2, "n_extremes": 3}
    assert "save_maps" not in config and "method_name" not in config  # outputs are not fingerprinted


def test_anomaly_monitor_takes_the_detector_by_the_same_name():
    from agg2exp_lightning.callbacks.anomaly_monitor import AnomalyMonitor

    with pytest.raises(ValueError, match=r"`detector`.*'lof'"):
        AnomalyMonitor(detector="lof")
    lof = AnomalyMonitor(detector="local_outlier_factor")
    assert lof.detector == "local_outlier_factor" and lof.state_key != AnomalyMonitor().state_key  # separate state per detector
    assert AnomalyMonitor().state_key == "AnomalyMonitor{'source': None, 'random_state': 123}"  # the default's key as before
    assert AnomalyMonitor().score_detector == "robust_distance"
    assert AnomalyMonitor(score_detector="isolation_forest").score_detector == "isolation_forest"
    with pytest.raises(ValueError, match=r"`score_detector`.*'forest'"):
        AnomalyMonitor(score_detector="forest")
    assert AnomalyMonitor().score_tail == "exponential" and AnomalyMonitor(score_tail="conformal").score_tail == "conformal"
    with pytest.raises(ValueError, match=r"`score_tail`.*'pareto'"):
        AnomalyMonitor(score_tail="pareto")

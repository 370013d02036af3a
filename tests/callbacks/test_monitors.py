"""The monitor callbacks with the Trainer's defaults (validation under inference_mode), on a tiny model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from monitor_helpers import TinySegmenter, loaders, make_trainer, scans  # noqa: I001 - beside this file

from agg2exp_lightning.callbacks import AnomalyMonitor, BiasMonitor, ExplanationMonitor
from agg2exp_lightning.explain import explain


def test_monitor_gradients_under_inference_mode_equal_direct_explain(tmp_path):
    torch.manual_seed(0)
    module = TinySegmenter()
    monitor = ExplanationMonitor(every_n_epochs=1, method="vanilla_gradient", num_scans=3, at_train_end=False)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    train, val = loaders()
    trainer.fit(module, train, val)  # validation runs under torch.inference_mode() by default
    check = monitor.latest
    assert check is not None and check.subject_ids == ["s2000", "s2001", "s2002"]
    assert check.roi.shape == (3, 3, 3) and np.isfinite(check.roi).all()
    for n, item in enumerate(scans(3, 2)):
        direct = explain(module.net, item["image"], method="vanilla_gradient")
        np.testing.assert_allclose(check.roi[n], direct.roi.double().numpy(), rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in module.parameters())  # explain() restored requires_grad


def test_monitors_log_scalars_tables_and_figures_and_history_survives_resume(tmp_path):
    module = TinySegmenter()
    callbacks = [ExplanationMonitor(every_n_epochs=1, num_scans=4, targets=["organ", "bone"], overlay_classes=["organ"]),
                 AnomalyMonitor(), BiasMonitor(columns=["scanner", "age"])]
    explainer, anomaly, bias = callbacks
    trainer = make_trainer(tmp_path, list(callbacks), max_epochs=2)
    train, val = loaders()
    trainer.fit(module, train, val)
    assert [h["epoch"] for h in explainer.history] == [0, 1]
    assert explainer.history[1]["drift"] is not None and explainer.history[0]["drift"] is None
    assert len(anomaly.history) == 2 and len(bias.history) == 2
    # the check carries the audit's evidence families, one row per explained scan and class
    ev = explainer.latest.evidence
    assert set(ev) == {"prediction", "attribution", "image"} and ev["prediction"].shape[:2] == explainer.latest.roi.shape[:2]
    assert np.isfinite(ev["attribution"][:, :, 0]).all()  # the attribution mass of every map
    metrics = pd.read_csv(next((tmp_path / "csv").rglob("metrics.csv")))
    for col in ("agg2exp/own_share/organ", "agg2exp/background_share/bone", "agg2exp/drift", "agg2exp/outliers/organ"):
        assert col in metrics.columns and metrics[col].notna().any(), col
    own = metrics["agg2exp/own_share/organ"].dropna().to_numpy()
    assert np.all((own >= 0) & (own <= 1))
    folder = next((tmp_path / "csv").rglob("agg2exp"))
    assert any(folder.glob("figures/agg2exp_global_roi_importance_epoch*.png"))
    assert any(folder.glob("figures/agg2exp_overlay_epoch*.png"))
    assert any(folder.glob("tables/agg2exp_roi_shares_epoch*.csv"))
    assert any(folder.glob("tables/agg2exp_anomaly_scores_epoch*.csv"))

    # resume from the checkpoint: the curves continue instead of starting over
    ckpt = next(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    fresh = [ExplanationMonitor(every_n_epochs=1, num_scans=4, targets=["organ", "bone"], overlay_classes=["organ"]),
             AnomalyMonitor(), BiasMonitor(columns=["scanner", "age"])]
    trainer2 = make_trainer(tmp_path / "resumed", list(fresh), max_epochs=3)
    trainer2.fit(TinySegmenter(), *loaders(), ckpt_path=ckpt)
    assert [h["epoch"] for h in fresh[0].history] == [0, 1, 2]
    assert fresh[0].scan_ids == explainer.scan_ids
    assert any("ExplanationMonitor" in k for k in state["callbacks"])


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        (lambda: [ExplanationMonitor(targets=["lungs"])], "no class 'lungs'"),
        (lambda: [ExplanationMonitor(targets=[7])], "class id 7 is outside"),
        (lambda: [ExplanationMonitor(num_scans=9)], "`num_scans`=9 but the validation set holds only 4"),
        (lambda: [ExplanationMonitor(method="smoothgrat")], "smoothgrad"),
        (lambda: [AnomalyMonitor()], "AnomalyMonitor needs a ExplanationMonitor"),
        (lambda: [ExplanationMonitor(), AnomalyMonitor(), BiasMonitor(columns=["sex"])], r"metadata columns \['sex'\] are not in"),
    ],
)
def test_bad_settings_fail_at_setup_with_a_clear_message(tmp_path, callbacks, message):
    trainer = make_trainer(tmp_path, callbacks(), max_epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(TinySegmenter(), *loaders())
    assert trainer.current_epoch == 0 and trainer.global_step == 0  # nothing trained before the error


def test_anomaly_monitor_exposes_the_calibrated_scan_level_score(tmp_path):
    from types import SimpleNamespace

    from agg2exp_lightning.analysis.anomaly import scan_anomaly_scores
    from agg2exp_lightning.callbacks.contract import ExplanationCheck

    rng = np.random.default_rng(0)
    roi, ref = rng.dirichlet(np.ones(3) * 20, size=(6, 2)), rng.dirichlet(np.ones(3) * 20, size=(12, 2))
    roi[0] = [[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]]  # one unusual validation scan
    check = ExplanationCheck(epoch=0, subject_ids=[f"v{i}" for i in range(6)], roi=roi, metadata=[{}] * 6,
                             reference_ids=[f"t{i}" for i in range(12)], reference_roi=ref, target_ids=[1, 2],
                             target_names=["organ", "bone"], region_names=["background", "organ", "bone"])
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], log_dir=str(tmp_path), default_root_dir=str(tmp_path),
                              callbacks=[], global_step=0, current_epoch=0)
    monitor = AnomalyMonitor()
    monitor.on_explanations(trainer, SimpleNamespace(), check)
    expected = scan_anomaly_scores(roi, ["organ", "bone"], ref, random_state=123)
    np.testing.assert_allclose(monitor.latest_scan.score, expected.score)
    assert np.argmax(monitor.latest_scan.score) == 0 and monitor.history[-1]["scan_flagged"] == int(expected.flagged.sum())
    conformal = AnomalyMonitor(score_tail="conformal")  # the audit's --score-tail, passed through
    conformal.on_explanations(trainer, SimpleNamespace(), check)
    np.testing.assert_allclose(conformal.latest_scan.score,
                               scan_anomaly_scores(roi, ["organ", "bone"], ref, random_state=123, score_tail="conformal").score)
    # with evidence families the monitor scores them with the audit's code
    from agg2exp_lightning.analysis.evidence import forest_features

    pred, ref_pred = rng.normal(500, 20, (6, 2, 4)), rng.normal(500, 20, (12, 2, 4))
    pred[1, 1] = np.nan  # not computable for one scan and class: left out, no crash
    with_ev = ExplanationCheck(**{**check.__dict__, "evidence": {"prediction": pred}, "reference_evidence": {"prediction": ref_pred}})
    m2 = AnomalyMonitor()
    m2.on_explanations(trainer, SimpleNamespace(), with_ev)
    both = scan_anomaly_scores(roi, ["organ", "bone"], ref, random_state=123,
                               families={"prediction": (forest_features(pred, "prediction"), forest_features(ref_pred, "prediction"))})
    assert m2.latest_scan.families == ("shares", "prediction") and np.isnan(m2.latest_scan.family_p["prediction"][1, 1])
    np.testing.assert_allclose(m2.latest_scan.score, both.score)
    assert AnomalyMonitor(evidence="shares").evidence == ("shares",)
    table = pd.read_csv(next(tmp_path.rglob("*anomaly_scores*.csv")))
    assert {"scan_score", "scan_p", "scan_flagged"} <= set(table.columns)
    small = ExplanationCheck(epoch=1, subject_ids=check.subject_ids, roi=roi, metadata=[{}] * 6, target_ids=[1, 2],
                             target_names=["organ", "bone"], region_names=["background", "organ", "bone"])
    monitor.on_explanations(trainer, SimpleNamespace(), small)
    assert monitor.latest_scan is None and monitor.history[-1]["scan_flagged"] is None  # 6 scans, no reference: too few


def test_a_skipped_scan_level_score_is_said_in_the_log(caplog):
    """5 validation scans and no reference: the scan-level score cannot be cross-fitted, and the log says so."""
    import logging

    from agg2exp_lightning.callbacks.anomaly_monitor import _scan_level

    roi = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 2))
    with caplog.at_level(logging.INFO, logger="agg2exp_lightning.callbacks.anomaly_monitor"):
        assert _scan_level(roi, ["a", "b"], None, 123) is None
    (record,) = [r for r in caplog.records if "scan-level score skipped" in r.getMessage()]
    assert record.levelno == logging.INFO and "5 validation and 0 reference scans, need 10" in record.getMessage()

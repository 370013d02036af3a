"""Evidence families beside the shares: known answers for each feature and the families in the scan-level score."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from agg2exp_lightning.analysis.anomaly import describe_worklist_row, scan_anomaly_scores
from agg2exp_lightning.analysis.cohort import analyze_cohort
from agg2exp_lightning.analysis.evidence import (
    anscombe,
    attribution_evidence,
    forest_features,
    image_evidence,
    missing_evidence,
    parse_evidence,
    prediction_evidence,
    scan_evidence,
    softmax_summary,
)
from agg2exp_lightning.analysis.tables import parse_explanation_table


def test_softmax_summary_is_the_mean_over_each_predicted_region():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 6, 5, 7, generator=g) * 3
    labels = logits[0].argmax(0)
    labels[labels == 3] = 0  # class 3 not predicted
    conf, ent = softmax_summary(logits, labels, 4, chunk_voxels=17)  # chunks that cut through the volume
    p = torch.softmax(logits[0].double(), dim=0)
    for c in range(3):
        m = labels == c
        assert conf[c] == pytest.approx(p.max(0).values[m].mean().item(), rel=1e-6)
        assert ent[c] == pytest.approx((-(p * p.log()).sum(0))[m].mean().item(), rel=1e-6)
    assert np.isnan(conf[3]) and np.isnan(ent[3])


def test_prediction_evidence_volumes_components_and_a_class_not_predicted():
    labels = np.zeros((10, 10, 10), dtype=np.int64)
    labels[1:3, 1:3, 1:3] = 1  # 8 voxels
    labels[6:9, 6:9, 6:9] = 1  # 27 voxels, a second component
    labels[4, 4, 4] = 2
    labels[5, 5, 5] = 2  # touches the first diagonally: one 26-connected component
    conf = np.array([0.9, 0.8, 0.7, np.nan])
    out = prediction_evidence(labels, [1, 2, 3], voxel_ml=0.5, confidence=conf, entropy=conf / 2)
    assert out["volume_ml"][:2] == [35 * 0.5, 2 * 0.5]
    full = ndimage.generate_binary_structure(3, 3)
    assert out["components"][:2] == [float(ndimage.label(labels == 1, full)[1]), 1.0] == [2.0, 1.0]
    assert out["confidence"][:2] == [0.8, 0.7] and out["entropy"][1] == 0.35
    assert all(np.isnan(v[2]) for v in out.values())  # class 3: not computable, never a zero


def test_attribution_evidence_mass_and_share_outside_the_body():
    attr = np.zeros((2, 4, 4, 4))
    attr[0, 0, 0, 0] = -3.0  # outside
    attr[0, 2, 2, 2] = 1.0  # inside
    body = np.zeros((4, 4, 4), dtype=bool)
    body[1:, 1:, 1:] = True
    out = attribution_evidence(attr, body)
    assert out["mass"] == [4.0, 0.0] and out["outside_body"][0] == 0.75 and np.isnan(out["outside_body"][1])
    empty = attribution_evidence(attr, np.zeros_like(body))
    assert all(np.isnan(v) for vals in empty.values() for v in vals)


def test_image_evidence_mean_and_sd_of_the_input_inside_each_predicted_class():
    rng = np.random.default_rng(0)
    image = rng.normal(0.5, 0.2, (6, 7, 5))
    labels = rng.integers(0, 3, (6, 7, 5))
    labels[labels == 2] = 0  # class 2 not predicted
    out = image_evidence(image, labels, [1, 0, 2])
    for row, c in enumerate([1, 0]):
        inside = [image[i] for i in np.ndindex(image.shape) if labels[i] == c]
        mean = sum(inside) / len(inside)
        assert out["intensity_mean"][row] == pytest.approx(mean, rel=1e-12)
        assert out["intensity_sd"][row] == pytest.approx((sum((v - mean) ** 2 for v in inside) / len(inside)) ** 0.5, rel=1e-12)
        lowest, highest = image.min(), image.max()
        assert out["at_input_bounds"][row] == sum(1 for i in np.ndindex(image.shape) if labels[i] == c and image[i] in (lowest, highest))
    assert sum(out["at_input_bounds"][:2]) == 2  # continuous values: one voxel holds the minimum, one the maximum
    assert all(np.isnan(v[2]) for v in out.values())  # not computable, never a zero
    with pytest.raises(ValueError, match=r"one grid, got \(6, 7, 5\) and \(6, 7, 4\)"):
        image_evidence(image, labels[..., :4], [1])


def test_the_background_image_row_counts_only_its_voxels_inside_the_body():
    image = np.zeros((4, 4, 4))
    labels = np.zeros((4, 4, 4), dtype=int)
    labels[0] = 1
    image[1] = 0.5
    image[2, :, :2] = 1.0  # a bright object in the body, assigned to no structure
    image[3] = 0.05  # air around the patient
    body = image > 0.25
    out = image_evidence(image, labels, [0, 1], body=body)
    inside = np.r_[np.full(16, 0.5), np.full(8, 1.0)]  # the body's background: slab 1 (16 voxels) and the lit half of slab 2
    assert out["intensity_mean"][0] == pytest.approx(inside.mean()) and out["intensity_sd"][0] == pytest.approx(inside.std())
    assert out["intensity_mean"][1] == 0.0  # other classes: every predicted voxel, in the body or not
    # the input's range is the whole scan's [0, 1]: the lit half of slab 2 (background in the body) sits at its top,
    # all of class 1 (slab 0) at its bottom, like voxels clipped by an intensity window
    assert out["at_input_bounds"] == [8.0, 16.0]
    everything = image_evidence(image, labels, [0], body=None)
    assert everything["intensity_mean"][0] == pytest.approx(image[1:].mean())
    no_body = image_evidence(image, labels, [0, 1], body=np.zeros_like(body))
    assert np.isnan(no_body["intensity_mean"][0]) and no_body["intensity_mean"][1] == 0.0
    with pytest.raises(ValueError, match=r"body mask on the prediction's grid, got \(4, 4\) and \(4, 4, 4\)"):
        image_evidence(image, labels, [0], body=body[0])


def test_scan_evidence_has_the_image_family_and_leaves_it_out_for_several_channels():
    labels = torch.zeros(4, 4, 4, dtype=torch.long)
    labels[:2] = 1
    image = torch.arange(64, dtype=torch.float32).reshape(1, 1, 4, 4, 4) / 64
    result = dataclasses.make_dataclass("R", ["prediction", "diagnostics", "attributions"])(labels, {}, None)
    ev = scan_evidence(result, image, [1], voxel_ml=1.0)
    assert ev["image"]["intensity_mean"] == [pytest.approx(image[0, 0, :2].mean().item())]
    two = scan_evidence(result, torch.cat([image, image], 1), [1], voxel_ml=1.0)
    assert np.isnan(two["image"]["intensity_mean"][0]) and two["prediction"]["volume_ml"] == [32.0]
    assert missing_evidence({"image": np.full((1, 1, 2), np.nan)}, ["heart"], ["image"])[0] == (
        "image left out for every class (not computable: class not predicted or several input channels)")


def test_evidence_selection_is_parsed_and_refused_by_name():
    assert parse_evidence("prediction, shares") == ("shares", "prediction")
    assert parse_evidence(None) == ("shares", "prediction", "attribution", "image")
    with pytest.raises(ValueError, match="shares, prediction, attribution, image"):
        parse_evidence("shares,volume")


def test_counts_enter_in_poisson_noise_units_and_sizes_as_log1p():
    # Anscombe's transform: a Poisson count's standard deviation is about 1 at any mean (simulated here)
    rng = np.random.default_rng(0)
    for lam, sd in ((2.0, 0.96), (5.0, 1.0), (60.0, 1.0)):
        assert np.std(anscombe(rng.poisson(lam, 200_000))) == pytest.approx(sd, abs=0.015)
    assert anscombe(np.array([0.0, 1.0, -2.0])) == pytest.approx([2 * 0.375 ** 0.5, 2 * 1.375 ** 0.5, 2 * 0.375 ** 0.5])
    # each feature through its own transform, by hand: prediction = volume, components, confidence, entropy
    raw = np.array([[[99.0, 3.0, 0.9, 0.2], [np.nan, np.nan, np.nan, np.nan]]])
    want = [[[np.log(100.0), 2 * 3.375 ** 0.5, 0.9, 0.2], [np.nan] * 4]]
    np.testing.assert_allclose(forest_features(raw, "prediction"), want)
    image = forest_features(np.array([[0.4, 0.1, 47.0]]), "image")  # mean, sd, voxels at the input's bounds
    np.testing.assert_allclose(image, [[0.4, 0.1, 2 * 47.375 ** 0.5]])


def test_a_count_constant_in_the_reference_is_measured_in_counting_noise():
    # Reference: 24 scans whose class has exactly 1 voxel at the input's bounds (no spread to scale by, so the
    # robust distance falls back to a scale of 1) and normal mean/sd; one audited scan has 47 such voxels.
    from scipy.stats import chi2

    from agg2exp_lightning.analysis.detectors import RobustDistance

    rng = np.random.default_rng(1)
    ref = np.stack([rng.normal(0.5, 0.01, 24), rng.normal(0.1, 0.01, 24), np.ones(24)], axis=1)
    scan = np.array([[np.median(ref[:, 0]), np.median(ref[:, 1]), 47.0]])
    got = RobustDistance().fit(forest_features(ref, "image")).score(forest_features(scan, "image"))[0]
    z = 2 * (47.375 ** 0.5 - 1.375 ** 0.5)  # 11.4 Poisson standard deviations (log1p gave 3.2 of its units)
    assert got == pytest.approx(z * z / 3 - chi2.ppf(0.975, 3) / 3)
    assert got > 40


def _cohort(rng, n, *, shrink=1.0, missing=()):
    """Shares from one Dirichlet (no signal there); a prediction family whose class-0 volume shrinks by ``shrink``."""
    mass = rng.dirichlet(np.ones(4) * 30, size=(n, 2))
    pred = np.stack([rng.normal(600, 40, (n, 2)), rng.poisson(1, (n, 2)) + 1.0, rng.uniform(0.9, 0.95, (n, 2)),
                     rng.uniform(0.1, 0.2, (n, 2))], axis=-1)
    pred[:, 0, 0] *= shrink
    for k in missing:
        pred[k, 1] = np.nan
    return mass, pred


def test_a_fault_seen_only_in_the_prediction_is_found_by_its_family_and_not_by_the_shares():
    rng = np.random.default_rng(0)
    ref_mass, ref_pred = _cohort(rng, 40)
    clean_mass, clean_pred = _cohort(rng, 30, missing=[0])
    bad_mass, bad_pred = _cohort(rng, 10, shrink=0.6)
    mass, pred = np.concatenate([clean_mass, bad_mass]), np.concatenate([clean_pred, bad_pred])
    truth = np.r_[np.zeros(30), np.ones(10)]
    shares_only = scan_anomaly_scores(mass, ["a", "b"], ref_mass)
    both = scan_anomaly_scores(mass, ["a", "b"], ref_mass,
                               families={"prediction": (forest_features(pred, "prediction"), forest_features(ref_pred, "prediction"))})
    # conformal p-values stop at 1 / (M + 1) and Fisher's sum carries the three other p-values' noise, so the
    # family lifts the ranking a lot without making it perfect
    auc_shares, auc_both = roc_auc_score(truth, shares_only.score), roc_auc_score(truth, both.score)
    assert auc_shares < 0.7 and auc_both > 0.8 and auc_both > auc_shares + 0.2
    assert both.families == ("shares", "prediction")
    # a scan whose prediction family cannot be computed for class b: left out there (no p), scored on the rest
    assert np.isnan(both.family_p["prediction"][0, 1]) and np.isfinite(both.family_p["prediction"][0, 0]) and np.isfinite(both.score[0])
    assert missing_evidence({"prediction": pred}, ["a", "b"], ["prediction"])[0] == (
        "prediction left out for b (not computable: class not predicted or no softmax)")
    # the shares alone switched off: the family alone finds it too
    alone = scan_anomaly_scores(mass, ["a", "b"], ref_mass, shares=False,
                                families={"prediction": (forest_features(pred, "prediction"), forest_features(ref_pred, "prediction"))})
    assert alone.families == ("prediction",) and roc_auc_score(truth, alone.score) > 0.8


def test_cohort_analysis_scores_the_families_and_names_what_was_left_out(make_frame):
    rng = np.random.default_rng(1)
    ref = parse_explanation_table(make_frame(30, 0, seed=3))
    aud = parse_explanation_table(make_frame(20, 0, seed=4))
    a = len(aud.classes)

    def evidence(n, shrink_first=0):
        pred = np.stack([rng.normal(600, 30, (n, a)), np.ones((n, a)), rng.uniform(0.9, 0.95, (n, a)), rng.uniform(0.1, 0.2, (n, a))], -1)
        pred[:shrink_first, 0, 0] = 372.0  # 38 % below 600
        attr = np.stack([rng.normal(50, 3, (n, a)), rng.uniform(0, 0.05, (n, a))], -1)
        attr[1, :, :] = np.nan  # scan 1: attribution not computable (e.g. an empty body)
        return {"prediction": pred, "attribution": attr}

    ref = dataclasses.replace(ref, evidence=evidence(30))
    aud = dataclasses.replace(aud, evidence=evidence(20, shrink_first=1))
    analysis = analyze_cohort(aud, ref, n_bootstrap=0)
    s = analysis.summary()
    assert s["scan_anomaly"]["evidence"] == ["shares", "prediction", "attribution"]
    assert {c["family"] for r in s["worklist"] for c in r["classes"]} <= {"shares", "prediction", "attribution"}
    assert np.isfinite(analysis.scan.family_p["prediction"][0, 0]) and np.isnan(analysis.scan.family_p["attribution"][1]).all()
    frame = analysis.per_scan_frame()
    assert "attribution left out for every class" in frame["evidence_left_out"].iloc[1] and frame["evidence_left_out"].iloc[0] == ""
    row = next(r for r in s["worklist"] if r["id"] == aud.ids[1])
    assert "attribution left out for every class" in describe_worklist_row(row)
    # --evidence shares, and the paper protocol by default, use the shares alone
    assert analyze_cohort(aud, ref, n_bootstrap=0, evidence="shares").scan.families == ("shares",)
    assert analyze_cohort(aud, ref, n_bootstrap=0, protocol="paper").scan.families == ("shares",)
    # a table of shares only (published tables): the families are left out with one note, not a crash
    plain = analyze_cohort(parse_explanation_table(make_frame(20, 0, seed=4)), parse_explanation_table(make_frame(30, 0, seed=3)),
                           n_bootstrap=0)
    assert plain.scan.families == ("shares",) and any("not available" in n for n in plain.notes)


def test_the_worklist_says_which_family_and_feature_moved_in_words():
    from agg2exp_lightning.analysis.anomaly import moved_features

    ref = np.column_stack([np.linspace(560, 640, 21), np.ones(21), np.full(21, 0.93), np.full(21, 0.15)])
    moved = moved_features(np.array([372.0, 1.0, 0.93, 0.15]), ref, "prediction", "heart", k=2)
    assert moved[0]["feature"] == "volume_ml" and moved[0]["reference_median"] == 600.0
    row = {"classes": [{"family": "prediction", "class": "heart", "p": 0.02, "absent": False, "features": moved}],
           "evidence_left_out": ""}
    assert describe_worklist_row(row) == ("heart prediction (per-class p 0.02): heart volume 372 ml, reference median 600 ml: "
                                          "38 % lower")


def test_a_bad_evidence_selection_stops_the_cli_in_one_line(tmp_path, capsys):
    from agg2exp_lightning.audit.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out"), "--evidence", "shares,volume"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("agg2exp-audit: error: --evidence:") and "'shares,volume'" in err
    assert not (tmp_path / "out").exists()

"""benchmarks/audit_power.py's analysis on an explained pool whose truth is known by construction."""
from __future__ import annotations

import pytest

from agg2exp_lightning.labels import THORAX_CLASSES


@pytest.fixture(scope="module")
def power(load_benchmark):
    return load_benchmark("audit_power")


def _pool(make_frame):
    """70 clean scans (10 of them from a 'degraded' scanner that in truth changes nothing) and 20 planted ones."""
    frame = make_frame(70, 20, seed=31)
    cond = ["none"] * 70 + ["pleural_effusion"] * 10 + ["metal_artefact"] * 10
    frame["planted_condition"] = cond
    frame["degraded"] = ["1" if i < 10 else "0" for i in range(90)]
    frame["scanner_model"] = ["Aquilion ONE" if i < 10 else ("iCT 256" if i % 2 else "Revolution CT") for i in range(90)]
    frame["pathology"] = frame["pathology_location"] = ""
    return frame.drop(columns=["scanner"])


def test_per_condition_auc_sensitivity_fpr_and_scanner_q(power, make_frame):
    pool = _pool(make_frame)
    res, analysis, truth = power.audit_cohort(pool, 0, 24, 60, list(THORAX_CLASSES))
    assert res["n_reference"] == 24 and res["n_audited"] == 60 and len(truth) == 60
    assert set(truth["planted_condition"]) >= {"none"}
    for name in ("pleural_effusion", "metal_artefact"):
        c = res["conditions"][name]
        assert c["n"] > 0 and c["auc"] == 1.0 and c["sensitivity"] == 1.0
    assert res["conditions"]["degraded_scanner"]["auc"] < 0.9  # its scans are clean: nothing to find
    assert res["fpr_flag"] <= 0.2 and res["expected_fpr"] == pytest.approx(1 / 25)
    assert res["scanner_q"] > 0.05  # no scanner effect was planted
    null = power.null_false_alarms(analysis, 4, seed=0)
    assert null["permutations"] == 4
    assert all(0 <= null[k] <= 1 for k in ("false_alarm_rate", "false_alarm_rate_outlier_tests", "false_alarm_rate_either_family"))
    assert null["false_alarm_rate_either_family"] >= max(null["false_alarm_rate"], null["false_alarm_rate_outlier_tests"])



def test_family_combinations_known_answers(load_benchmark):
    """Two families of three per-class p-values: scan 0 is extreme in family x only, scan 1 mildly in both."""
    import numpy as np
    from scipy.stats import chi2

    combos = load_benchmark("family_combinations")
    grid = (np.arange(20) + 1) / 20.0  # reference p-values, evenly spread
    ref = np.stack([np.roll(grid, k) for k in range(3)], axis=1)
    x = np.array([[1 / 21] * 3, [0.15] * 3, [0.6] * 3])
    y = np.array([[0.6] * 3, [0.15] * 3, [0.6] * 3])
    out = combos.combinations({"x": (x, ref), "y": (y, ref)})

    def fisher(p):
        return -np.log10(chi2.sf(-2 * np.log(p).sum(axis=1), 2 * p.shape[1]))

    np.testing.assert_allclose(out["x alone"], fisher(x), rtol=1e-9)
    np.testing.assert_allclose(out["fisher, every family"], fisher(np.concatenate([x, y], axis=1)), rtol=1e-9)
    # Fisher over both puts the scan seen mildly twice first; the largest standardised family puts the one extreme scan first
    assert np.argmax(out["fisher, every family"]) == 1 and np.argmax(out["largest standardised family"]) == 0
    s_ref = fisher(ref)
    np.testing.assert_allclose(out["largest standardised family"][0], (fisher(x)[0] - s_ref.mean()) / s_ref.std(), rtol=1e-9)


def test_evidence_ceiling_auc_and_feature_table_known_answers(load_benchmark):
    """Two-sided AUC by hand on tiny columns, and one record's features in the table's order."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    ceiling = load_benchmark("evidence_ceiling")
    pos = np.array([True, True, False, False, False])
    x = np.column_stack([[5.0, 4.0, 1.0, 2.0, 3.0],   # positives on top: 1.0
                         [0.0, 1.0, 5.0, 6.0, 7.0],   # positives at the bottom: 1 - 0 = 1.0
                         [1.0, 3.0, 2.0, 4.0, 0.0],   # 3 of the 6 pairs won: 0.5
                         [1.0, 1.0, 1.0, 1.0, 1.0]])  # all tied: 0.5
    np.testing.assert_allclose(ceiling.two_sided_auc(x, pos), [1.0, 1.0, 0.5, 0.5])
    rng = np.random.default_rng(3)
    y = rng.normal(size=(40, 3))
    lab = rng.random(40) < 0.3
    want = [max(a, 1 - a) for a in (roc_auc_score(lab, y[:, k]) for k in range(3))]
    np.testing.assert_allclose(ceiling.two_sided_auc(y, lab), want, rtol=1e-12)
    assert np.isnan(ceiling.two_sided_auc(np.array([[1.0], [np.nan], [0.0], [2.0], [3.0]]), pos)[0])
    rec = {"id": "s", "classes": ["a", "b"], "regions": ["a", "b"], "mass": [[0.75, 0.25], [0.5, 0.5]], "dice": [0.9, 0.0],
           "evidence": {"prediction": {"volume_ml": [9.0, 3.0], "components": [1.0, 2.0]}}}
    table, names, dice = ceiling.feature_table([rec])
    assert names[:4] == ["share of a in a", "share of a in b", "share of b in a", "share of b in b"]
    np.testing.assert_allclose(table[0, :4], [0.75, 0.25, 0.5, 0.5])
    assert names[4:6] == ["prediction: a volume", "prediction: a connected components"]
    np.testing.assert_allclose(table[0, 4:6], [np.log(10.0), 2 * 1.375 ** 0.5])  # log1p volume, Anscombe count
    assert np.isnan(table[0, 6])  # a feature the record lacks
    np.testing.assert_allclose(dice, [[0.9, 0.0]])


def test_unseen_faults_known_answers(load_benchmark, tmp_path):
    """Each fault by hand on a tiny volume; the faulty pool is written in the pool's layout with one meta row per copy."""
    import nibabel as nib
    import numpy as np

    uf = load_benchmark("unseen_faults")
    ct = np.arange(4 * 7 * 8, dtype=np.float32).reshape(4, 7, 8) - 100.0
    heart = np.zeros(ct.shape, np.uint8)
    heart[1, 2, 3] = 1
    masks = {"heart": heart, "ribs": np.ones(ct.shape, np.uint8)}
    out, same = uf.hu_offset(ct, masks, 40.0)
    np.testing.assert_allclose(out, ct + 40.0)
    assert same is masks
    out, _ = uf.motion_ghost(ct, masks, 0.3)
    assert out[0, 0, 0] == pytest.approx(0.7 * ct[0, 0, 0] + 0.3 * ct[0, 2, 0])  # row 0 gets row 0 - 5 mod 7 = 2
    assert out[0, 6, 0] == pytest.approx(0.7 * ct[0, 6, 0] + 0.3 * ct[0, 1, 0])
    out, cut = uf.short_coverage(ct, masks, 0.25)
    assert out.shape == (4, 7, 6) and cut["heart"].shape == (4, 7, 6) and out[0, 0, 5] == ct[0, 0, 5]
    out, _ = uf.fov_truncation(ct, masks, 0.25)
    assert (out[0] == uf.AIR_HU).all() and (out[3] == uf.AIR_HU).all() and (out[1:3] == ct[1:3]).all()
    out, _ = uf.contrast_phase(ct, masks, 250.0)
    k = np.ravel_multi_index((1, 2, 3), ct.shape)
    assert out[1, 2, 3] == ct[1, 2, 3] + 250.0 and (np.delete(out.ravel(), k) == np.delete(ct.ravel(), k)).all()
    assert uf.fault_id("s0005", "short_coverage 12 %") == "s0005_short_coverage_0p125"

    pool = tmp_path / "pool"
    (pool / "s0001" / "segmentations").mkdir(parents=True)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), pool / "s0001" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(heart, affine), pool / "s0001" / "segmentations" / "heart.nii.gz")
    (pool / "meta.csv").write_text("image_id;age;split;planted_condition;degraded\ns0001;50;val;none;0\n", encoding="utf-8")
    truth = uf.write_faulty_pool(pool, ["s0001"], tmp_path / "faulty")
    assert len(truth) == len(uf.FAULTS) and set(truth.values()) == set(uf.FAULTS)
    sid = uf.fault_id("s0001", "short_coverage 25 %")
    img = nib.load(tmp_path / "faulty" / sid / "ct.nii.gz")
    assert img.shape == (4, 7, 6) and nib.load(tmp_path / "faulty" / sid / "segmentations" / "heart.nii.gz").shape == (4, 7, 6)
    meta = (tmp_path / "faulty" / "meta.csv").read_text().splitlines()
    assert meta[0] == "image_id;age;split;planted_condition;degraded" and f"{sid};50;test;none;0" in meta

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

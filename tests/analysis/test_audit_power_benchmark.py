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

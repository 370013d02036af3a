"""Per-class Isolation Forests: agreement with scikit-learn/scipy and planted anomalies."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.ensemble import IsolationForest

from agg2exp_lightning.analysis.anomaly import class_anomaly_scores, extreme_cases
from agg2exp_lightning.analysis.cohort import analyze_cohort
from agg2exp_lightning.analysis.tables import parse_explanation_table, read_explanation_table


def test_published_table_rho_matches_an_independent_sklearn_scipy_computation(published_table):
    raw = pd.read_csv(published_table)
    analysis = analyze_cohort(read_explanation_table(published_table))
    names = [c[: -len("_dice")] for c in raw.columns if c.endswith("_dice")]
    assert len(names) == 17
    for i, a in enumerate(names):
        x = raw[[c for c in raw.columns if c.startswith(f"{a}_explanation_in_") and c.endswith("_mass")]].to_numpy()
        forest = IsolationForest(random_state=123).fit(x)
        decision = forest.decision_function(x)
        expected = spearmanr(decision, raw[f"{a}_dice"]).statistic
        # our score is -decision_function, so rho flips sign
        assert analysis.correlation["rho"].iloc[i] == pytest.approx(-expected, abs=1e-12)
        np.testing.assert_allclose(analysis.anomaly.scores[:, i], -decision, atol=1e-12)
        np.testing.assert_array_equal(analysis.anomaly.outliers[:, i], forest.predict(x) == -1)


def test_planted_anomalies_rank_first_in_every_class(make_frame):
    table = parse_explanation_table(make_frame(100, 8, seed=0))
    res = class_anomaly_scores(table.mass, table.classes)
    planted = set(range(100, 108))
    for i in range(len(table.classes)):
        top = set(np.argsort(-res.scores[:, i])[:8])
        assert top == planted, table.classes[i]
    assert res.outliers[100:].all() and res.any_outlier[100:].all()
    cases = extreme_cases(res.scores, table.ids, table.classes, k=3)
    most = cases[cases.end == "most_anomalous"]
    assert set(most["id"]) <= {table.ids[j] for j in planted}
    assert (cases.groupby(["class", "end"]).size() == 3).all()


def test_reference_fit_scores_new_scans(make_frame):
    reference = parse_explanation_table(make_frame(80, 0, seed=1))
    audited = parse_explanation_table(make_frame(10, 4, seed=2))
    res = class_anomaly_scores(audited.mass, audited.classes, reference.mass)
    assert (res.n_reference == 80).all()
    forest = IsolationForest(random_state=123).fit(reference.mass[:, 2])
    np.testing.assert_allclose(res.scores[:, 2], -forest.decision_function(audited.mass[:, 2]))
    assert res.outliers[10:].all()


def test_missing_shares_absent_region_is_zero_absent_class_is_unscored(make_frame):
    table = parse_explanation_table(make_frame(30, 0))
    mass = table.mass.copy()
    mass[3, 1, :] = np.nan  # class 1 not predicted in scan 3: no shares at all
    mass[4, 2, 5] = np.nan  # region 5 absent from scan 4: class 2's share there is undefined
    res = class_anomaly_scores(mass, table.classes)
    assert np.isnan(res.scores[3, 1]) and not res.outliers[3, 1]
    assert np.isfinite(res.scores[3, 0]) and res.n_reference[1] == 29 and res.n_reference[2] == 30
    filled = mass[:, 2].copy()
    filled[4, 5] = 0.0
    forest = IsolationForest(random_state=123).fit(filled)
    np.testing.assert_allclose(res.scores[:, 2], -forest.decision_function(filled))
    with pytest.raises(ValueError, match="reference_mass"):
        class_anomaly_scores(mass, table.classes, mass[:, :2])

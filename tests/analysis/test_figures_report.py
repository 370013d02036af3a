"""Figures and report without a browser: argument checks, edge cases, escaping."""
from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from agg2exp_lightning.analysis.figures import case_grid, dependency_graph, figure_png, importance_heatmap
from agg2exp_lightning.analysis.report import render_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_figures_render_and_check_their_arguments():
    assert figure_png(importance_heatmap(np.array([[0.9, 0.1], [np.nan, 1.0]]), ["a", "b"], ["a", "b"])).startswith(PNG)
    with pytest.raises(ValueError, match="importance"):
        importance_heatmap(np.zeros((2, 3)), ["a", "b"], ["a", "b"])
    empty = pd.DataFrame(columns=["region", "class", "share"])
    assert figure_png(dependency_graph(empty, ["a", "b"])).startswith(PNG)  # no edge: a note, no division by zero
    rows = [("s1", np.zeros((4, 5)), np.zeros((4, 5)), np.zeros((4, 5))), ("s2", np.ones((6, 3)), np.ones((6, 3)), np.ones((6, 3)))]
    assert figure_png(case_grid(rows, title="t")).startswith(PNG)  # rows of different sizes, all-zero attribution
    with pytest.raises(ValueError, match="row 0"):
        case_grid([("s", np.zeros((4, 4)), np.zeros((4, 5)), np.zeros((4, 4)))], title="t")
    with pytest.raises(ValueError, match="at least one row"):
        case_grid([], title="t")


class _Texts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text += data


def test_report_escapes_every_data_string():
    evil = "<script>alert(1)</script>"
    summary = {
        "n_scans": 2, "anomaly": {"fitted_on": "audited scans", "random_state": 123, "n_outlier_scans": 1,
                                  "score": "-decision_function", "outlier": "predict == -1"},
        "per_class": {evil: {"rho": -0.5, "p": 0.01, "q": 0.02, "n": 2, "n_outliers": 1, "own_share": 0.5,
                             "context_reliance": 0.5, "background_share": None}},
        "strongest_dependencies": [{"region": evil, "class": evil, "share": 0.25}],
        "extreme_cases": {evil: {"most_anomalous": [{"id": evil, "score": 0.1}], "least_anomalous": []}},
        "bias_tests": [{"group": "any_class", "column": evil, "test": "fisher_exact", "n_outliers": 1, "n_inliers": 1,
                        "p": 0.5, "q": 0.5, "effect": "odds_ratio", "effect_size": 1.0, "detail": evil}],
        "bias_skipped": [{"group": "*", "column": evil, "reason": evil}],
    }
    page = render_report(summary, {"importance_heatmap": PNG}, inputs={"table": f"/data/{evil}.csv"})
    parsed = _Texts()
    parsed.feed(page)
    assert "script" not in parsed.tags
    assert parsed.text.count(evil) >= 8 and f"/data/{evil}.csv" in parsed.text
    assert parsed.tags.count("img") == 1

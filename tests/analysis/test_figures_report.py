"""Figures and report without a browser: argument checks, edge cases, escaping."""
from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from matplotlib.patches import FancyArrowPatch

from agg2exp_lightning.analysis.figures import (
    anomaly_vs_dice,
    case_grid,
    dependency_graph,
    figure_png,
    importance_heatmap,
    share_distributions,
)
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


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_text()]


def test_heatmap_draws_the_matrix_on_a_square_root_colour_scale():
    values = np.array([[0.9, 0.1], [np.nan, 1.0]])
    fig = importance_heatmap(values, ["lung_upper_lobe_left", "b"], ["r1", "r2"])
    ax = fig.axes[0]
    (image,) = ax.get_images()
    drawn = np.ma.masked_invalid(image.get_array())
    np.testing.assert_array_equal(drawn.mask, [[False, False], [True, False]])  # the NaN cell stays blank
    np.testing.assert_allclose(drawn.filled(-1), [[0.9, 0.1], [-1, 1.0]])
    # square-root scale from 0 to the largest share: 0.9 -> sqrt(0.9), 0.1 -> sqrt(0.1)
    rgba = image.to_rgba(np.array([[0.9, 0.1, 1.0, 0.0]]))[0]
    viridis = colormaps["viridis"]
    np.testing.assert_allclose(rgba, viridis(np.array([0.9 ** 0.5, 0.1 ** 0.5, 1.0, 0.0])), atol=1 / 255)
    assert sorted(_texts(ax)) == ["10", "100", "90"]  # percent in each finite cell, none in the NaN cell
    assert [t.get_text() for t in ax.get_yticklabels()] == ["lung_upper_lobe_left", "b"]  # the table's names
    assert [t.get_text() for t in ax.get_xticklabels()] == ["r1", "r2"]


def test_dependency_graph_draws_one_arrow_per_dependency_between_the_named_nodes():
    deps = pd.DataFrame({"region": ["a", "c"], "class": ["b", "a"], "share": [0.25, 0.05]})
    fig = dependency_graph(deps, ["a", "b", "c", "d"])
    ax = fig.axes[0]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 2
    assert arrows[0].get_linewidth() == pytest.approx(5.5) and arrows[1].get_linewidth() == pytest.approx(1.5)
    assert {"25.0%", "5.0%"} <= set(_texts(ax))
    # nodes on the unit circle from the top, clockwise: a at (0, 1), b at (1, 0); d is unused (grey)
    nodes = {tuple(np.round(line.get_xydata()[0], 6)): line.get_color() for line in ax.lines}
    assert nodes == {(0.0, 1.0): "tab:blue", (1.0, 0.0): "tab:blue", (0.0, -1.0): "tab:blue", (-1.0, 0.0): "lightgray"}
    empty = dependency_graph(pd.DataFrame(columns=["region", "class", "share"]), ["a", "b"]).axes[0]
    assert not empty.patches and "no dependency outside own regions and background" in _texts(empty)


def test_case_grid_places_each_panel_where_the_voxels_are():
    image = np.zeros((4, 5))
    prediction = np.zeros((4, 5))
    attribution = np.zeros((4, 5))
    attribution[1, 3] = -2.0  # |attribution| is drawn
    fig = case_grid([("s1", image, prediction, attribution)], title="t")
    (mosaic,) = fig.axes[0].get_images()
    pixels = np.asarray(mosaic.get_array())
    # one row of three 5x4 tiles (transposed: first axis to the right), separated by 2-pixel gaps
    assert pixels.shape == (5 + 2, 3 * (4 + 2), 3)
    np.testing.assert_allclose(pixels[:5, :4], 0.0)  # image: constant, drawn black
    np.testing.assert_allclose(pixels[:5, 6:10], np.broadcast_to(colormaps["tab20"](0.0)[:3], (5, 4, 3)))  # label 0
    overlay = pixels[:5, 12:16]
    # voxel (1, 3): column 1, row 5 - 1 - 3 = 1 (second axis upwards); full weight 0.8 on inferno's brightest colour
    np.testing.assert_allclose(overlay[1, 1], 0.8 * np.array(colormaps["inferno"](1.0)[:3]), atol=1e-6)
    rest = np.ones((5, 4), dtype=bool)
    rest[1, 1] = False
    np.testing.assert_allclose(overlay[rest], 0.0)
    np.testing.assert_allclose(pixels[5:], 1.0)  # the gap is white
    assert {"image", "prediction", "|attribution|", "s1"} <= set(_texts(fig.axes[0]))


def test_share_distributions_draw_one_box_per_class_over_the_finite_scans():
    own = np.array([[0.1, 0.5], [0.3, np.nan], [0.2, 0.7]])
    background = np.array([[0.6, 0.2], [0.4, 0.1], [0.5, np.nan]])
    fig = share_distributions(own, background, ["lung_upper_lobe_left", "heart"])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["own-region share", "background share"]
    for ax, medians in zip(panels, ([0.2, 0.6], [0.5, 0.15])):  # NaN left out: medians of 3 and 2 values
        # horizontal boxes: a median is a vertical segment, drawn in the median colour (C1)
        drawn = [line.get_xdata()[0] for line in ax.lines if line.get_color() == "C1"]
        np.testing.assert_allclose(drawn, medians)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["lung_upper_lobe_left", "heart"]
    assert len(share_distributions(own, None, ["a", "b"]).axes) == 1  # no background: one panel


def test_anomaly_vs_dice_draws_each_scan_once_outliers_apart():
    scores = np.array([[-0.2, 0.1], [0.3, np.nan], [-0.1, -0.4]])
    dice = np.array([[0.9, 0.8], [0.5, 0.7], [0.95, 0.6]])
    outliers = np.array([[False, True], [True, False], [False, False]])
    corr = pd.DataFrame({"rho": [-0.5, 0.25], "q": [0.04, 0.5]}, index=["a", "b"])
    fig = anomaly_vs_dice(scores, dice, outliers, ["a", "b"], corr)
    first, second = fig.axes
    inliers, flagged = (c.get_offsets() for c in first.collections)
    np.testing.assert_allclose(inliers, [[-0.2, 0.9], [-0.1, 0.95]])
    np.testing.assert_allclose(flagged, [[0.3, 0.5]])
    inliers, flagged = (c.get_offsets() for c in second.collections)
    np.testing.assert_allclose(inliers, [[-0.4, 0.6]])  # the NaN score is left out
    np.testing.assert_allclose(flagged, [[0.1, 0.8]])
    assert first.get_title() == "a\n\u03c1=-0.50, q=0.04"


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


def test_figures_an_audit_skips_are_said_in_the_log(make_frame, caplog):
    """A table without Dice: the forest score vs Dice figure is left out, and the log says which and why."""
    import logging

    from agg2exp_lightning.analysis.cohort import analyze_cohort
    from agg2exp_lightning.analysis.tables import parse_explanation_table
    from agg2exp_lightning.audit.outputs import cohort_figures

    frame = make_frame(12)
    table = parse_explanation_table(frame.drop(columns=[c for c in frame.columns if c.endswith(("_dice", "_iou"))]))
    with caplog.at_level(logging.INFO, logger="agg2exp_lightning.audit.outputs"):
        figures = cohort_figures(analyze_cohort(table))
    assert "anomaly_vs_dice" not in figures and "mean_anomaly_vs_mean_dice" not in figures
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "forest score vs Dice skipped (figure and Spearman tests): the table has no Dice columns" in said
    assert "mean forest score vs mean Dice skipped: 0 scans with both, need 3" in said

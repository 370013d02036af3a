"""The method-comparison figure and tables: what is drawn and written, checked against hand-made values."""
from __future__ import annotations

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from agg2exp_lightning.evaluation.report import markdown_table, plot_comparison, summarise

METHODS = ["vanilla_gradient", "smoothgrad"]


def _table() -> pd.DataFrame:
    """Two methods x two scans x two targets; times repeat per scan (one value per scan and method)."""
    rows = []
    values = {
        "vanilla_gradient": {"faithfulness": [0.1, 0.2, 0.3, 0.4], "complexity": [0.01, 0.02, 0.03, 0.04],
                             "seconds": [2.0, 4.0]},
        "smoothgrad": {"faithfulness": [0.5, 0.6, np.nan, 0.8], "complexity": [0.1, 0.2, 0.3, 0.4],
                       "seconds": [10.0, 30.0]},
    }
    for method, v in values.items():
        for k, (subject, target) in enumerate([("s0", "a"), ("s0", "b"), ("s1", "a"), ("s1", "b")]):
            rows.append({"subject_id": subject, "method": method, "target": target,
                         "faithfulness": v["faithfulness"][k], "sensitivity_avg": 0.5, "sensitivity_max": 0.75,
                         "complexity": v["complexity"][k], "seconds_one_class": v["seconds"][k // 2] / 2,
                         "seconds_all_classes": v["seconds"][k // 2]})
    return pd.DataFrame(rows)


def _drawn_figure(monkeypatch, table, path):
    closed = []
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig))  # keep the figure to look at
    plot_comparison(table, path, METHODS)
    (fig,) = closed
    return fig


def test_comparison_figure_draws_every_value_of_each_method_in_its_panel(monkeypatch, tmp_path):
    fig = _drawn_figure(monkeypatch, _table(), tmp_path / "summary.png")
    try:
        panels = {ax.get_title(): ax for ax in fig.axes}
        assert list(panels) == ["Faithfulness ↑", "Avg. sensitivity ↓", "Max. sensitivity ↓", "Complexity ↓",
                                "Time, one class (s) ↓", "Time, all classes (s) ↓"]
        expected = {
            "Faithfulness ↑": ([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.8]),  # the NaN is left out
            "Complexity ↓": ([0.01, 0.02, 0.03, 0.04], [0.1, 0.2, 0.3, 0.4]),
            "Time, all classes (s) ↓": ([2.0, 4.0], [10.0, 30.0]),  # one point per scan, not per target
            "Time, one class (s) ↓": ([1.0, 2.0], [5.0, 15.0]),
        }
        for title, per_method in expected.items():
            ax = panels[title]
            for position, (collection, values) in enumerate(zip(ax.collections, per_method), start=1):
                points = np.asarray(collection.get_offsets())
                np.testing.assert_allclose(np.sort(points[:, 1]), values)
                assert np.all(np.abs(points[:, 0] - position) <= 0.15)  # jittered around the method's box
            # the box's median line sits at each method's median
            medians = [line.get_ydata()[0] for line in ax.lines if len(line.get_ydata()) == 2
                       and line.get_ydata()[0] == line.get_ydata()[1] and line.get_color() == "C1"]
            np.testing.assert_allclose(medians, [np.median(v) for v in per_method])
        assert panels["Time, all classes (s) ↓"].get_yscale() == "log"  # positive times on a log axis
        assert panels["Faithfulness ↑"].get_yscale() == "linear"
        assert [t.get_text() for t in panels["Complexity ↓"].get_xticklabels()] == ["vanilla\ngradient", "smoothgrad"]
        assert fig.get_suptitle() == "Attribution methods on 2 scans, 2 targets"
    finally:
        plt.close("all")


def test_comparison_figure_on_disk_is_the_drawn_figure(tmp_path):
    path = plot_comparison(_table(), tmp_path / "summary.png", METHODS)
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (7 * 120, 13 * 120)  # figsize 13 x 7 inches at 120 dpi
    rgb = pixels[..., :3]
    blue = np.array(matplotlib.colors.to_rgb("tab:blue"))
    # the scatter points (tab:blue at alpha 0.5 over white) are there: 2 x (4 + 3 + 4 + 4 + 2 + 2) = 38 marks
    half_blue = 0.5 * blue + 0.5
    assert np.count_nonzero(np.all(np.abs(rgb - half_blue) < 0.02, axis=-1)) > 38
    assert not list(tmp_path.glob("*.tmp*"))


def test_summary_and_markdown_hold_the_hand_computed_means():
    summary = summarise(_table(), METHODS)
    assert summary.loc["vanilla_gradient", "faithfulness_mean"] == pytest.approx(0.25)
    assert summary.loc["vanilla_gradient", "faithfulness_sd"] == pytest.approx(0.129099, abs=1e-6)  # sd of .1,.2,.3,.4
    assert summary.loc["smoothgrad", "faithfulness_mean"] == pytest.approx(0.633333, abs=1e-6)
    assert summary.loc["smoothgrad", "faithfulness_n"] == 3
    assert summary.loc["smoothgrad", "seconds_all_classes_mean"] == pytest.approx(20.0)  # per scan: 10 and 30
    assert summary.loc["smoothgrad", "seconds_all_classes_sd"] == pytest.approx(14.142136, abs=1e-6)
    lines = markdown_table(summary).splitlines()
    assert lines[2].startswith("| vanilla_gradient | 0.250 ± 0.129 | 0.500 ± 0.000 | 0.750 ± 0.000 | 0.025 ± 0.013 |")
    assert lines[3].endswith("| 20.00 ± 14.14 |")

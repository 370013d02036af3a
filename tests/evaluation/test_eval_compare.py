"""compare_methods: known answers through the whole pipeline, resume, output files, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import gradient_attributions

from agg2exp_lightning.evaluation.compare import ComparisonSettings, compare_methods, resolve_targets
from agg2exp_lightning.evaluation.report import summarise

NAMES = ("background", "left", "right")
SETTINGS = ComparisonSettings(n_runs=8, subset_size=100, noise_samples=2, batch_size=4)


def _scans(n=3):
    rng = np.random.default_rng(11)
    return [(f"s{i:03d}", torch.from_numpy(rng.random((1, 12, 12, 12), dtype=np.float32))) for i in range(n)]


class MethodAttributor:
    """Two methods with known metric values on a linear model, and a call log."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, image, method, targets):
        self.calls.append((method, tuple(targets)))
        if method == "exact":  # each voxel's exact contribution: faithfulness 1 with the fixed mask
            return gradient_attributions(model, image, targets, times_input_minus=float(image.min()))
        if method == "fixed_map":  # ignores the input: sensitivity 0
            g = torch.Generator().manual_seed(0)
            return torch.randn(len(targets), *image.shape[1:], generator=g)
        raise AssertionError(method)


def test_known_answers_flow_into_the_table_and_files(linear_net, tmp_path):
    ex = MethodAttributor()
    table = compare_methods(linear_net, _scans(), ["exact", "fixed_map"], ["background", "left", "right"], tmp_path,
                            explainer=ex, settings=SETTINGS, class_names=NAMES, progress=False)
    assert len(table) == 3 * 2 * 3 and set(table["target"]) == set(NAMES)
    exact = table[table["method"] == "exact"]
    np.testing.assert_allclose(exact["faithfulness"], 1.0, atol=1e-9)
    fixed = table[table["method"] == "fixed_map"]
    np.testing.assert_allclose(fixed[["sensitivity_avg", "sensitivity_max"]], 0.0, atol=1e-12)
    assert (exact["sensitivity_avg"] > 0).all() and (exact["sensitivity_max"] >= exact["sensitivity_avg"]).all()
    assert table["complexity"].between(0, 1).all() and (table["seconds_all_classes"] > 0).all()
    # per method and scan: one all-target call, one one-class call, two noisy calls
    assert ex.calls.count(("exact", (0, 1, 2))) == 3 * 3 and ex.calls.count(("exact", (0,))) == 3
    for name in ("results.csv", "summary.csv", "summary.md", "summary.png", "settings.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "scans" / "s000").iterdir()) == ["exact.csv", "fixed_map.csv"]
    assert not list(tmp_path.rglob("*.tmp*"))
    summary = pd.read_csv(tmp_path / "summary.csv", index_col="method")
    assert summary.loc["exact", "faithfulness_mean"] == pytest.approx(1.0) and summary.loc["exact", "faithfulness_n"] == 9
    assert summary.loc["exact", "seconds_all_classes_n"] == 3  # efficiency is per scan, not per target
    md = (tmp_path / "summary.md").read_text()
    assert "| exact | 1.000 ± 0.000 |" in md and "Faithfulness ↑" in md


def test_an_all_zero_map_gives_nan_rows_with_one_warning(linear_net, tmp_path):
    from agg2exp_lightning.evaluation import UndefinedScoreWarning

    def explainer(model, image, method, targets):  # e.g. a class the model does not predict: zero proxy
        a = torch.ones(len(targets), *image.shape[1:]) * image[0]
        a[[i for i, t in enumerate(targets) if t == 1]] = 0
        return a

    with pytest.warns(UndefinedScoreWarning, match="s000/m: all-zero attribution maps for \\['left'\\]") as record:
        table = compare_methods(linear_net, _scans(1), ["m"], NAMES, tmp_path, explainer=explainer, settings=SETTINGS,
                                class_names=NAMES, progress=False)
    assert len([w for w in record if issubclass(w.category, UndefinedScoreWarning)]) == 1
    metrics = ["faithfulness", "sensitivity_avg", "sensitivity_max", "complexity"]
    assert table[metrics].notna().all(axis=1).tolist() == [True, False, True]
    assert table.loc[1, metrics].isna().all()


def test_summary_is_mean_and_sample_sd():
    table = pd.DataFrame({"subject_id": ["a", "a", "b", "b"], "method": "m", "target": ["x", "y", "x", "y"],
                          "faithfulness": [0.1, 0.3, 0.5, np.nan], "sensitivity_avg": 1.0, "sensitivity_max": 2.0,
                          "complexity": 0.5, "seconds_one_class": [1.0, 1.0, 3.0, 3.0], "seconds_all_classes": 4.0})
    s = summarise(table).loc["m"]
    assert s["faithfulness_mean"] == pytest.approx(0.3) and s["faithfulness_sd"] == pytest.approx(0.2)
    assert s["faithfulness_n"] == 3  # NaN left out
    assert s["seconds_one_class_mean"] == pytest.approx(2.0) and s["seconds_one_class_n"] == 2


def test_an_interrupted_run_resumes_without_recomputing_finished_scans(linear_net, tmp_path):
    scans = _scans()
    loads = []

    def sources():
        for sid, img in scans:
            yield sid, (lambda sid=sid, img=img: loads.append(sid) or img)

    class Interrupt(Exception):
        pass

    ex = MethodAttributor()

    def failing(model, image, method, targets):
        if len(ex.calls) >= 5:  # scan s000 done (4 calls); dies inside s001
            raise Interrupt
        return ex(model, image, method, targets)

    with pytest.raises(Interrupt):
        compare_methods(linear_net, sources(), ["exact"], NAMES, tmp_path, explainer=failing, settings=SETTINGS,
                        class_names=NAMES, progress=False)
    assert (tmp_path / "scans" / "s000" / "exact.csv").is_file() and not (tmp_path / "scans" / "s001").exists()
    first = pd.read_csv(tmp_path / "scans" / "s000" / "exact.csv")
    ex2, loads[:] = MethodAttributor(), []
    table = compare_methods(linear_net, sources(), ["exact"], NAMES, tmp_path, explainer=ex2, settings=SETTINGS,
                            class_names=NAMES, progress=False)
    assert loads == ["s001", "s002"]  # the finished scan is not even loaded
    assert len(ex2.calls) == 2 * 4 and len(table) == 9  # 4 calls per scan: all, one class, 2 noisy
    pd.testing.assert_frame_equal(table[table["subject_id"] == "s000"].reset_index(drop=True), first)
    # a third run recomputes nothing; a new method is computed for every scan
    ex3 = MethodAttributor()
    compare_methods(linear_net, sources(), ["exact", "fixed_map"], NAMES, tmp_path, explainer=ex3, settings=SETTINGS,
                    class_names=NAMES, progress=False)
    assert {m for m, _ in ex3.calls} == {"fixed_map"}


def test_same_subsets_and_noise_for_every_method_and_run(linear_net, tmp_path):
    t1 = compare_methods(linear_net, _scans(1), ["exact"], NAMES, tmp_path / "a", explainer=MethodAttributor(),
                         settings=SETTINGS, class_names=NAMES, progress=False)
    t2 = compare_methods(linear_net, _scans(1), ["fixed_map", "exact"], NAMES, tmp_path / "b", explainer=MethodAttributor(),
                         settings=SETTINGS, class_names=NAMES, progress=False)
    cols = ["faithfulness", "sensitivity_avg", "sensitivity_max", "complexity"]
    np.testing.assert_allclose(t1[cols].to_numpy(), t2[t2["method"] == "exact"][cols].to_numpy(), rtol=1e-12)


def test_other_settings_in_the_output_folder_are_refused(linear_net, tmp_path):
    compare_methods(linear_net, _scans(1), ["fixed_map"], NAMES, tmp_path, explainer=MethodAttributor(), settings=SETTINGS,
                    class_names=NAMES, progress=False)
    other = ComparisonSettings(n_runs=9, subset_size=100, noise_samples=2)
    with pytest.raises(ValueError, match=r"`out_dir`.*another comparison \(differs in: batch_size, n_runs\)"):
        compare_methods(linear_net, _scans(1), ["fixed_map"], NAMES, tmp_path, explainer=MethodAttributor(), settings=other,
                        class_names=NAMES, progress=False)
    with pytest.raises(ValueError, match=r"`out_dir`.*another comparison \(differs in: context\)"):  # e.g. another checkpoint
        compare_methods(linear_net, _scans(1), ["fixed_map"], NAMES, tmp_path, explainer=MethodAttributor(), settings=SETTINGS,
                        class_names=NAMES, context={"checkpoint_sha256": "abc"}, progress=False)


def test_bad_targets_methods_and_explainer_output_are_refused(linear_net, tmp_path):
    with pytest.raises(ValueError, match="did you mean 'lung_lower_lobe_left'"):
        resolve_targets(["lung_lower_lobe_lft"])
    assert resolve_targets(["aorta", 0]) == [1, 0]
    with pytest.raises(ValueError, match="without repeats"):
        resolve_targets(["aorta", 1])
    with pytest.raises(ValueError, match="`methods`"):
        compare_methods(linear_net, _scans(1), [], NAMES, tmp_path, explainer=MethodAttributor(), settings=SETTINGS,
                        class_names=NAMES, progress=False)
    with pytest.raises(ValueError, match="unique subject ids"):
        compare_methods(linear_net, _scans(1) * 2, ["fixed_map"], NAMES, tmp_path, explainer=MethodAttributor(),
                        settings=SETTINGS, class_names=NAMES, progress=False)
    with pytest.raises(ValueError, match="scan 's000', method 'bad'.*shape"):
        compare_methods(linear_net, _scans(1), ["bad"], NAMES, tmp_path / "x", settings=SETTINGS, class_names=NAMES,
                        explainer=lambda m, x, method, t: torch.ones(len(t), 12, 12), progress=False)


@pytest.mark.parametrize(("kwargs", "match"), [({"n_runs": 1}, "`n_runs`"), ({"mask": "x"}, "`mask`"),
                                               ({"radius": 0}, "`radius`"), ({"eps": 1.5}, "`eps`")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ComparisonSettings(**kwargs)

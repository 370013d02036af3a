"""agg2exp-compare-methods: checkpoint + data + explain() end to end (tiny Swin-UNETR), argument errors."""
from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import torch

from agg2exp_lightning.evaluation import UndefinedScoreWarning
from agg2exp_lightning.evaluation.cli import build_parser, comparison_options, main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32),
                                norm_name=("group", {"num_groups": 3}), sw_batch_size=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"spacing": [16.0, 16.0, 16.0]}}, path)
    return path


def test_method_options_one_syntax_with_an_optional_method_prefix():
    assert comparison_options(["smoothgrad.n_samples=10", "smoothgrad.noise=0.1", "kernelshap_cubes.baseline=min"]) == {
        "smoothgrad": {"n_samples": 10, "noise": 0.1}, "kernelshap_cubes": {"baseline": "min"}}
    # unprefixed: every compared method that takes the key; explain()'s own keywords: all of them; a prefix wins
    both = ["smoothgrad", "integrated_gradients"]
    assert comparison_options(["n_samples=4", "max_memory=1e9", "sg.n_samples=7"], both) == {
        "smoothgrad": {"n_samples": 7}, "max_memory": 1e9}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        comparison_options(["n_samples"])
    with pytest.raises(ValueError, match="'smoothgard' is not a method of this command.*did you mean 'smoothgrad'"):
        comparison_options(["smoothgard.n_samples=10"])
    with pytest.raises(ValueError, match="none of the methods .* takes 'n_sample'; did you mean 'n_samples'"):
        comparison_options(["n_sample=10"], both)


def test_parser_defaults_are_the_paper_settings():
    args = build_parser().parse_args(["--checkpoint", "c", "--data", "d", "--out", "o"])
    assert args.model == "c" and (args.accelerator, args.devices) == ("auto", "1")
    assert (args.n_runs, args.subset_size, args.noise_samples, args.radius, args.eps) == (100, 50176, 3, 0.1, 0.1)
    assert args.targets is None  # the paper's seven classes when the model has them, else all
    assert args.split == "test" and len(args.methods) == 5


def test_main_reports_bad_input_with_exit_status_2(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--checkpoint", "c", "--data", "d", "--out", "o", "--n-runs", "1", "--quiet"]) == 2
    assert "`n_runs`" in capsys.readouterr().err


@pytest.mark.slow  # ~30-40 s on a shared 2-core CPU: Swin-UNETR checkpoint, data loading, windowed gradients
def test_main_end_to_end_with_explain(tiny_checkpoint, tiny_cohort, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--checkpoint", str(tiny_checkpoint), "--data", str(tiny_cohort), "--out", str(out), "--methods",
            "vanilla_gradient", "--targets", "lung_upper_lobe_left", "heart", "--max-scans", "1", "--split", "train",
            "--n-runs", "2", "--subset-size", "200", "--noise-samples", "1", "--no-one-class-timing", "--accelerator", "cpu",
            "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        assert main(argv) == 0
    assert str(out / "summary.md") in capsys.readouterr().out
    table = pd.read_csv(out / "results.csv")
    assert list(table["target"]) == ["lung_upper_lobe_left", "heart"] and set(table["method"]) == {"vanilla_gradient"}
    assert (table["seconds_all_classes"] > 0).all() and table["seconds_one_class"].isna().all()
    assert table["faithfulness"].notna().any()  # the untrained model predicts at least one of the two classes
    settings = json.loads((out / "settings.json").read_text())["config"]
    assert settings["roi_size"] == [32, 32, 32] and settings["n_runs"] == 2  # the checkpoint's windows
    assert "| vanilla_gradient |" in (out / "summary.md").read_text()
    # a second call resumes: nothing is recomputed, the results stay identical
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        assert main(argv) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)

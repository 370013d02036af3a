"""agg2exp-compare-methods: checkpoint + data loading end to end (tiny Swin-UNETR), argument errors."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from agg2exp_lightning.evaluation import UndefinedScoreWarning
from agg2exp_lightning.evaluation.cli import build_parser, main, parse_method_options, run_comparison
from agg2exp_lightning.evaluation.compare import ComparisonSettings
from agg2exp_lightning.labels import THORAX_CLASSES


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


def _gradient_explainer(calls):
    from agg2exp_lightning.explain.proxy import prediction_labels, proxy_output

    def explain(model, image, method, targets):
        x = image[None].detach().clone().requires_grad_(True)
        logits = model.predict_logits(x)
        labels = prediction_labels(logits.detach())[0]
        calls.append((method, image.shape, tuple(targets), set(labels.unique().tolist())))
        return torch.stack([torch.autograd.grad(proxy_output(logits, labels, [t]).sum(), x, retain_graph=True)[0][0, 0]
                            for t in targets])

    return explain


@pytest.mark.slow  # ~25 s on a shared 2-core CPU: a Swin-UNETR checkpoint, data loading, sliding windows
def test_run_comparison_on_a_checkpoint_and_a_cohort(tiny_checkpoint, tiny_cohort, tmp_path):
    calls = []
    settings = ComparisonSettings(n_runs=4, subset_size=200, noise_samples=1, batch_size=2)
    targets = ["background", "lung_upper_lobe_left", "heart"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)  # the untrained model may not predict every class
        table = run_comparison(tiny_checkpoint, tiny_cohort, tmp_path, methods=["vanilla_gradient"], targets=targets,
                               max_scans=1, split="train", device="cpu", settings=settings,
                               explainer=_gradient_explainer(calls), progress=False)
    assert len(table) == 3 and list(table["target"]) == targets
    # classes the model predicts have finite scores; a class it does not predict has a zero proxy, hence NaN
    predicted = calls[0][3]
    expected_finite = [THORAX_CLASSES.index(t) in predicted for t in targets]
    assert any(expected_finite)
    assert table["faithfulness"].notna().tolist() == expected_finite
    assert table["complexity"].notna().tolist() == expected_finite
    # the checkpoint's spacing (16 mm) was used: a 40^3 cohort at 8 mm comes out at about 20^3 voxels
    shape = calls[0][1]
    assert shape[0] == 1 and all(15 <= s <= 21 for s in shape[1:])
    summary = pd.read_csv(tmp_path / "summary.csv", index_col="method")
    assert list(summary.index) == ["vanilla_gradient"]
    import json

    stored = json.loads((tmp_path / "settings.json").read_text())
    assert stored["roi_size"] == [32, 32, 32]  # sliding windows of the checkpoint for the faithfulness passes


def test_parse_method_options():
    assert parse_method_options(["smoothgrad.n_samples=10", "smoothgrad.noise=0.1", "kernelshap_cubes.baseline=min"]) == {
        "smoothgrad": {"n_samples": 10, "noise": 0.1}, "kernelshap_cubes": {"baseline": "min"}}
    with pytest.raises(ValueError, match="METHOD.KEY=VALUE"):
        parse_method_options(["n_samples=10"])
    with pytest.raises(ValueError, match="unknown method 'smoothgard'"):
        parse_method_options(["smoothgard.n_samples=10"])


def test_parser_defaults_are_the_paper_settings():
    args = build_parser().parse_args(["--checkpoint", "c", "--data", "d", "--out", "o"])
    assert (args.n_runs, args.subset_size, args.noise_samples, args.radius, args.eps) == (100, 50176, 3, 0.1, 0.1)
    assert args.targets == ["background", "aorta", "lung_lower_lobe_left", "lung_lower_lobe_right", "trachea", "heart", "ribs"]
    assert args.split == "test" and len(args.methods) == 5


def test_main_reports_bad_input_with_exit_status_2(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--checkpoint", "c", "--data", "d", "--out", "o", "--n-runs", "1", "--quiet"]) == 2
    assert "`n_runs`" in capsys.readouterr().err

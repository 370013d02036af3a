"""Protocols in the method comparison: faithfulness mask, sensitivity draws, recorded settings."""
from __future__ import annotations

import json
import warnings
import zlib

import numpy as np
import pytest
import torch

from agg2exp_lightning.evaluation import ComparisonSettings, UndefinedScoreWarning, compare_methods, make_method_attributor
from agg2exp_lightning.evaluation.cli import main
from agg2exp_lightning.evaluation.faithfulness import faithfulness_correlation
from agg2exp_lightning.explain import explain


def test_settings_take_the_protocols_choices_unless_given():
    paper = ComparisonSettings(protocol="paper")
    assert (paper.mask, paper.sensitivity_draws, paper.crop_to_body) == ("recomputed", "independent", False)
    ours = ComparisonSettings()
    assert (ours.protocol, ours.mask, ours.sensitivity_draws, ours.crop_to_body) == ("corrected", "fixed", "shared", True)
    mixed = ComparisonSettings(protocol="paper", mask="fixed")
    record = mixed.resolved_protocol().as_dict()
    assert record["name"] == "paper" and record["overridden"] == ["faithfulness_mask"]
    assert record["settings"]["kernelshap_spread"] == "broadcast"
    with pytest.raises(ValueError, match=r"`protocol`.*\['paper', 'corrected'\].*'pappr'"):
        ComparisonSettings(protocol="pappr")
    with pytest.raises(ValueError, match="`sensitivity_draws`.*'same'"):
        ComparisonSettings(sensitivity_draws="same")
    assert (paper.sensitivity_prediction, ours.sensitivity_prediction) == ("clean", "noisy")
    one_setting = ComparisonSettings(protocol="paper", sensitivity_prediction="noisy").resolved_protocol()
    assert one_setting.overridden == ("sensitivity_prediction",) and one_setting.kernelshap_estimator == "captum"
    with pytest.raises(ValueError, match="`sensitivity_prediction`.*'fresh'"):
        ComparisonSettings(sensitivity_prediction="fresh")


def test_faithfulness_mask_follows_the_protocol(net, image):
    maps = torch.rand(2, *image.shape[1:], generator=torch.Generator().manual_seed(0))
    kw = dict(n_runs=6, subset_size=100, rng=0)
    paper = faithfulness_correlation(net, image, maps, [0, 2], protocol="paper", **kw)
    recomputed = faithfulness_correlation(net, image, maps, [0, 2], mask="recomputed", **kw)
    fixed = faithfulness_correlation(net, image, maps, [0, 2], mask="fixed", **kw)
    default = faithfulness_correlation(net, image, maps, [0, 2], **kw)
    torch.testing.assert_close(paper.output_drops, recomputed.output_drops)
    torch.testing.assert_close(default.output_drops, fixed.output_drops)
    assert not torch.allclose(fixed.output_drops, recomputed.output_drops)  # the choice matters on this net


def test_independent_draws_give_each_input_its_own_noise_and_shared_draws_the_same(net, image):
    noisy = (image + 0.05).clamp(0, 1)
    opts = {"smoothgrad": {"n_samples": 3}}
    shared = make_method_attributor(protocol="corrected", **opts)
    independent = make_method_attributor(protocol="paper", **opts)
    seed_of = lambda x: zlib.crc32(x.contiguous().numpy().tobytes())  # noqa: E731
    torch.testing.assert_close(shared(net, noisy, "smoothgrad", [0, 1]),
                               explain(net, noisy, method="smoothgrad", targets=[0, 1], n_samples=3, seed=0).attributions)
    torch.testing.assert_close(independent(net, noisy, "smoothgrad", [0, 1]),
                               explain(net, noisy, method="smoothgrad", targets=[0, 1], n_samples=3, seed=seed_of(noisy)).attributions)
    assert seed_of(noisy) != seed_of(image)
    torch.testing.assert_close(independent(net, noisy, "smoothgrad", [0, 1]), independent(net, noisy, "smoothgrad", [0, 1]))  # reproducible


def test_comparison_records_protocol_and_its_settings(net, image, tmp_path):
    settings = ComparisonSettings(protocol="paper", n_runs=3, subset_size=50, noise_samples=1, time_one_class=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        compare_methods(net, [("s1", image)], ["vanilla_gradient"], [0, 1], tmp_path / "cmp", settings=settings,
                        class_names=["a", "b", "c"], progress=False)
    stored = json.loads((tmp_path / "cmp" / "settings.json").read_text())
    config = stored.get("config", stored)
    assert config["protocol"] == "paper" and config["mask"] == "recomputed"
    assert config["protocol_settings"]["settings"]["sensitivity_draws"] == "independent"


def test_unknown_protocol_on_the_command_line_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["--checkpoint", "c", "--data", "d", "--out", str(out), "--protocol", "papper", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "`protocol`" in err and "'paper', 'corrected'" in err and "'papper'" in err
    assert not out.exists()


def _recording(explainer, calls):
    """``explainer`` that records the ``prediction`` keyword of every call."""

    def run(model, image, method, targets, prediction=None):
        calls.append(prediction)
        return explainer(model, image, method, targets, prediction=prediction)

    return run


@pytest.mark.parametrize(("protocol", "prediction"), [("paper", None), ("corrected", None), ("paper", "noisy")])
def test_paper_kernelshap_explains_noisy_copies_with_the_clean_prediction(net, image, tmp_path, protocol, prediction):
    """Under paper KernelSHAP of the clean scan and of its noisy copies holds one prediction of the clean scan
    as feature and proxy mask (the authors' wrapper closes over the clean ``out_max``); under corrected (or paper with
    sensitivity_prediction="noisy") each copy is predicted anew. The sensitivity is then the relative
    distance to explain(noisy, prediction=clean labels)."""
    settings = ComparisonSettings(protocol=protocol, n_runs=3, subset_size=50, noise_samples=2, time_one_class=False,
                                  sensitivity_prediction=prediction)
    opts = {"kernelshap_semantic": {"n_samples": 8}}
    calls: list = []
    explainer = _recording(make_method_attributor(protocol=settings.resolved_protocol(), **opts), calls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        table = compare_methods(net, [("s1", image)], ["kernelshap_semantic"], [0, 2], tmp_path / "cmp", settings=settings,
                                explainer=explainer, class_names=["a", "b", "c"], progress=False)
    with torch.no_grad():
        clean = net(image[None]).argmax(1)[0]
    assert len(calls) == 3  # the clean scan, then two noisy copies
    if settings.sensitivity_prediction == "noisy":
        assert calls == [None, None, None]
        return
    assert all(torch.equal(c, clean) for c in calls)
    from agg2exp_lightning.evaluation.compare import _ScanContext
    from agg2exp_lightning.evaluation.sensitivity import relative_distance

    noise = _ScanContext(net, "s1", image, [0, 2], settings, "").noise()
    seed_of = lambda x: zlib.crc32(x.contiguous().numpy().tobytes())  # noqa: E731
    ref = explain(net, image, method="ks_semantic", targets=[0, 2], n_samples=8, seed=seed_of(image), protocol="paper",
                  prediction=clean).attributions
    distances = []
    for u in noise:
        noisy = (image.double() + torch.as_tensor(u)).float()
        with torch.no_grad():
            assert not torch.equal(net(noisy[None]).argmax(1)[0], clean)  # the noise moves the prediction: the choice matters
        held = explain(net, noisy, method="ks_semantic", targets=[0, 2], n_samples=8, seed=seed_of(noisy), protocol="paper",
                       prediction=clean).attributions
        distances.append(relative_distance(ref, held))
    expected = torch.stack(distances, 1).mean(1).numpy()
    np.testing.assert_allclose(table["sensitivity_avg"].to_numpy(), expected, rtol=1e-6)


def test_an_explainer_without_prediction_is_refused_where_the_protocol_needs_it(net, image, tmp_path):
    settings = ComparisonSettings(protocol="paper", n_runs=3, subset_size=50, noise_samples=1, time_one_class=False)
    plain = lambda model, x, method, targets: make_method_attributor(protocol="paper")(model, x, method, targets)  # noqa: E731
    with pytest.raises(ValueError, match="`explainer` to take a `prediction=` keyword.*sensitivity_prediction='clean'"):
        compare_methods(net, [("s1", image)], ["kernelshap_semantic"], [0], tmp_path / "cmp", settings=settings,
                        explainer=plain, class_names=["a", "b", "c"], progress=False)

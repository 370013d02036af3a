"""Protocols (paper / corrected): the registry, overrides, and what they change in ``explain``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from agg2exp_lightning.explain import explain, roi_importance
from agg2exp_lightning.explain._gradients import integration_points
from agg2exp_lightning.protocols import PROTOCOLS, get_protocol, resolve_protocol

from explain_models import RegionNet


def test_unknown_protocol_names_the_value_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"`protocol`.*\['paper', 'corrected'\].*'papr'.*did you mean 'paper'"):
        get_protocol("papr")
    with pytest.raises(ValueError, match="protocol setting.*kernelshap_spred.*did you mean 'kernelshap_spread'"):
        get_protocol("paper", kernelshap_spred="divide")
    with pytest.raises(ValueError, match="kernelshap_spread.*'broadcast', 'divide'.*'even'"):
        get_protocol("paper", kernelshap_spread="even")
    assert get_protocol("Paper").name == "paper"  # case forgiven


def test_paper_protocol_holds_the_published_choices_and_overrides_are_recorded():
    paper = get_protocol("paper")
    assert (paper.kernelshap_spread, paper.faithfulness_mask, paper.crop_to_body, paper.sensitivity_draws,
            paper.ig_integration, paper.empty_regions) == ("broadcast", "recomputed", False, "independent", "uniform_inclusive", "zero")
    assert (paper.kernelshap_estimator, paper.cube_mask, paper.semantic_features, paper.sensitivity_prediction) == (
        "captum", "modulo", "label_range", "clean")
    corrected = resolve_protocol(None)
    assert corrected is PROTOCOLS["corrected"]
    assert (corrected.kernelshap_estimator, corrected.cube_mask, corrected.semantic_features, corrected.sensitivity_prediction) == (
        "constrained", "balanced", "present", "noisy")
    assert corrected.kernelshap_spread == "divide" and corrected.empty_regions == "nan"
    mixed = get_protocol("paper", empty_regions="nan")
    assert mixed.overridden == ("empty_regions",) and mixed.label == "paper (empty_regions=nan)"
    assert mixed.as_dict()["settings"]["empty_regions"] == "nan" and mixed.as_dict()["name"] == "paper"
    assert get_protocol("paper", empty_regions="zero").overridden == ()  # same value: nothing overridden


def test_uniform_inclusive_rule_is_linspace_with_equal_weights():
    alphas, weights = integration_points(20, "uniform_inclusive")
    assert alphas[0] == 0 and alphas[-1] == 1
    torch.testing.assert_close(alphas, torch.linspace(0, 1, 20, dtype=torch.float64))
    torch.testing.assert_close(weights, torch.full((20,), 0.05, dtype=torch.float64))


class _Cubic(nn.Module):
    """logit_c = a_c x^3 + b_c: with a fixed mask, the proxy gradient of class c is 3 a_c x^2 on its mask."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor([1.0, 2.0], dtype=torch.float64))
        self.register_buffer("b", torch.tensor([0.3, 0.0], dtype=torch.float64))

    def forward(self, x):
        return self.a.view(1, 2, 1, 1, 1) * x**3 + self.b.view(1, 2, 1, 1, 1)


def test_paper_ig_rule_gives_the_published_20_point_average_and_gauss_legendre_the_integral():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 4, 4, 4, generator=g, dtype=torch.float64) * 2
    model = _Cubic()
    mask = (model(x).argmax(1)[0] == torch.arange(2).view(2, 1, 1, 1)).double()  # [2, *S]
    a = model.a.view(2, 1, 1, 1)
    n = 20
    # IG(x) = x * sum_k w_k 3 a (alpha_k x)^2 mask: uniform inclusive sum_k alpha_k^2 / n = (2n-1) / (6(n-1))
    paper_expected = 3 * a * x[0] ** 3 * mask * (2 * n - 1) / (6 * (n - 1))
    exact = a * x[0] ** 3 * mask
    paper = explain(model, x, method="ig", n_steps=n, protocol="paper")
    corrected = explain(model, x, method="ig", n_steps=n)
    torch.testing.assert_close(paper.attributions, paper_expected)
    torch.testing.assert_close(corrected.attributions, exact)
    assert paper.diagnostics["protocol"]["settings"]["ig_integration"] == "uniform_inclusive"
    assert corrected.diagnostics["protocol"]["name"] == "corrected"


def _region_setup():
    regions = torch.zeros(6, 6, 6, dtype=torch.long)
    regions[:2] = 1
    regions[2:3, :3] = 2
    alpha = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    beta = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    model = RegionNet(regions, alpha, beta, context=[1, 2, 0])
    x = torch.rand(1, 1, 6, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    return model, x, regions


def test_paper_protocol_broadcasts_kernelshap_values_and_an_option_overrides_it():
    model, x, regions = _region_setup()
    kw = dict(method="ks_semantic", n_samples=40, seed=0)
    paper = explain(model, x, protocol="paper", **kw)
    corrected = explain(model, x, **kw)
    sizes = torch.bincount(regions.flatten(), minlength=3).double()
    # the same Shapley values: broadcast = divide * |S_j| voxel by voxel
    torch.testing.assert_close(paper.attributions, corrected.attributions * sizes[regions])
    assert paper.diagnostics["protocol"]["settings"]["kernelshap_spread"] == "broadcast"
    overridden = explain(model, x, protocol="paper", spread="divide", **kw)
    torch.testing.assert_close(overridden.attributions, corrected.attributions)
    assert overridden.diagnostics["protocol"]["overridden"] == ["kernelshap_spread"]


def test_empty_region_share_is_zero_under_the_paper_convention_and_nan_otherwise():
    a = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
    lab = torch.tensor([0, 0, 1, 1])  # region 2 has no voxel
    nan_conv = roi_importance(a, lab, 3)
    zero_conv = roi_importance(a, lab, 3, empty_regions="zero")
    assert torch.isnan(nan_conv[0, 2]) and zero_conv[0, 2] == 0
    torch.testing.assert_close(zero_conv[0, :2], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.isnan(roi_importance(torch.zeros(1, 4), lab, 3, empty_regions="zero")).all()  # all-zero map: no shares
    assert torch.isnan(roi_importance(a, lab, 3, "mean", empty_regions="zero")[0, 2])
    with pytest.raises(ValueError, match="empty_regions.*'nan' or 'zero'.*'none'"):
        roi_importance(a, lab, 3, empty_regions="none")


def test_explain_under_the_paper_protocol_writes_zero_for_a_class_region_absent_from_the_scan():
    model, x, _ = _region_setup()
    paper = explain(model, x, method="vg", num_regions=4, protocol="paper")  # region 3: no voxel
    ours = explain(model, x, method="vg", num_regions=4)
    assert (paper.roi[:, 3] == 0).all() and torch.isnan(ours.roi[:, 3]).all()
    torch.testing.assert_close(paper.roi[:, :3], ours.roi[:, :3])

"""Faithfulness correlation: known answers, agreement with Quantus on the same subsets, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import N_CLASSES, ProxyModule, gradient_attributions
from torch import nn

from agg2exp_lightning.evaluation import (
    UndefinedScoreWarning,
    attribution_sums,
    faithfulness_correlation,
    output_drops,
    random_subsets,
)
from agg2exp_lightning.explain.proxy import prediction_labels

N_VOXELS = 12**3


def _predicts_every_class(net, image):
    with torch.no_grad():
        return set(prediction_labels(net(image[None])).unique().tolist()) == set(range(N_CLASSES))


def test_exact_contributions_of_a_linear_model_have_correlation_one(linear_net, image, targets):
    assert _predicts_every_class(linear_net, image)
    b = float(image.min())
    a = gradient_attributions(linear_net, image, targets, times_input_minus=b)
    res = faithfulness_correlation(linear_net, image, a, targets, n_runs=30, subset_size=200, rng=0)
    # each voxel's contribution is exact, so the subset mass *is* the proxy drop, run by run
    torch.testing.assert_close(res.attribution_sums, res.output_drops, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.correlation, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-9)
    flipped = faithfulness_correlation(linear_net, image, -a, targets, subsets=random_subsets(N_VOXELS, 200, 30, 0))
    torch.testing.assert_close(flipped.correlation, -torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-9)
    # with the mask recomputed on each perturbed input the proxy is no longer linear
    rec = faithfulness_correlation(linear_net, image, a, targets, n_runs=30, subset_size=200, rng=0, mask="recomputed")
    assert not torch.allclose(rec.output_drops, res.output_drops)


def test_attribution_sums_are_subset_sums():
    a = torch.arange(2 * 27, dtype=torch.float32).reshape(2, 3, 3, 3)
    subsets = np.array([[0, 1, 2], [26, 5, 7]])
    expected = torch.tensor([[3.0, 38.0], [84.0, 119.0]], dtype=torch.float64)  # map 1 = map 0 + 27
    torch.testing.assert_close(attribution_sums(a, subsets), expected)


@pytest.mark.parametrize("mask", ["fixed", "recomputed"])
def test_agrees_with_quantus_on_the_same_subsets(net, image, targets, mask, monkeypatch):
    import quantus  # the reference: a dev dependency of `make test`, never skipped
    assert _predicts_every_class(net, image)
    n_runs, size = 25, 150
    subsets = random_subsets(N_VOXELS, size, n_runs, rng=3)
    a = gradient_attributions(net, image, targets)  # any map will do; a real one is least trivial
    ours = faithfulness_correlation(net, image, a, targets, subsets=subsets, mask=mask, batch_size=4)

    with torch.no_grad():
        labels = prediction_labels(net(image[None]))[0]
    proxy = ProxyModule(net, targets, labels if mask == "fixed" else None).eval()
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=n_runs, subset_size=size, perturb_baseline="black", normalise=True, abs=False,
        return_aggregate=False, disable_warnings=True,
    )
    reference = []
    for t in range(len(targets)):  # Quantus normalises all maps of a call by one max: one map per call
        draws = iter(subsets)
        monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: next(draws))
        reference += metric(model=proxy, x_batch=image[None].numpy(), y_batch=np.array([t]),
                            a_batch=a[t][None, None].numpy(), channel_first=True, device="cpu")
        assert next(draws, None) is None  # Quantus drew exactly our subsets
    np.testing.assert_allclose(ours.correlation.numpy(), reference, rtol=0, atol=2e-5)
    assert np.ptp(reference) > 0.05  # distinct, non-trivial values were compared


class _CountingNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.net(x)


def test_all_targets_share_one_set_of_batched_forward_passes(net, image, targets):
    counting = _CountingNet(net)
    subsets = random_subsets(N_VOXELS, 100, 10, rng=0)
    drops = output_drops(counting, image, targets, subsets, batch_size=4)
    assert counting.batches == [1, 4, 4, 2]  # the clean pass, then 10 perturbed copies in batches of 4
    single = [output_drops(net, image, [t], subsets, batch_size=1) for t in targets]
    # proxies are float32 sums of ~700 logits: batched convolutions differ by a few float32 ulps of ~500
    torch.testing.assert_close(drops, torch.cat(single), rtol=1e-5, atol=1e-4)


def test_sliding_windows_match_the_whole_volume_for_a_pointwise_model(image, targets):
    torch.manual_seed(0)
    pointwise = nn.Conv3d(1, N_CLASSES, 1).eval()  # each voxel's logits depend on that voxel only
    subsets = random_subsets(N_VOXELS, 100, 6, rng=1)
    whole = output_drops(pointwise, image, targets, subsets)
    windows = output_drops(pointwise, image, targets, subsets, roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.5)
    torch.testing.assert_close(windows, whole, rtol=1e-5, atol=1e-4)


def test_same_seed_same_result_and_model_state_restored(net, image, targets):
    a = torch.randn(3, 12, 12, 12)
    net.train()
    r1 = faithfulness_correlation(net, image, a, targets, n_runs=8, subset_size=64, rng=7)
    r2 = faithfulness_correlation(net, image, a, targets, n_runs=8, subset_size=64, rng=np.random.default_rng(7))
    torch.testing.assert_close(r1.correlation, r2.correlation, rtol=0, atol=0)
    assert net.training and all(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_batched_image_and_numpy_inputs_are_accepted(net, image, targets):
    a = torch.randn(3, 12, 12, 12)
    r1 = faithfulness_correlation(net, image, a, targets, n_runs=5, subset_size=64, rng=0)
    r2 = faithfulness_correlation(net, image[None].numpy(), a.numpy(), targets, n_runs=5, subset_size=64, rng=0)
    torch.testing.assert_close(r1.correlation, r2.correlation)


# -- bad input ---------------------------------------------------------------------------------

def test_attributions_of_another_shape_are_refused(net, image, targets):
    with pytest.raises(ValueError, match="`attributions`.*match `image`"):
        faithfulness_correlation(net, image, torch.randn(3, 12, 12, 11), targets, n_runs=5, subset_size=10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_attributions_are_refused(net, image, targets, bad):
    a = torch.randn(3, 12, 12, 12)
    a[1, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="`attributions`.*finite"):
        faithfulness_correlation(net, image, a, targets, n_runs=5, subset_size=10)


def test_all_zero_map_gives_nan_with_a_warning_and_leaves_the_others(net, image, targets):
    a = torch.randn(3, 12, 12, 12)
    a[2] = 0
    with pytest.warns(UndefinedScoreWarning, match="all-zero"):
        res = faithfulness_correlation(net, image, a, targets, n_runs=6, subset_size=64, rng=0)
    assert torch.isfinite(res.correlation[:2]).all() and torch.isnan(res.correlation[2])


def test_constant_attributions_give_nan_with_a_warning(net, image, targets):
    with pytest.warns(UndefinedScoreWarning, match="`attribution sums` is constant"):
        res = faithfulness_correlation(net, image, torch.full((3, 12, 12, 12), 0.3), targets, n_runs=6, subset_size=64)
    assert torch.isnan(res.correlation).all()


def test_constant_image_is_refused(net, targets):
    with pytest.raises(ValueError, match="`image` is constant"):
        faithfulness_correlation(net, torch.full((1, 12, 12, 12), 0.5), torch.randn(3, 12, 12, 12), targets,
                                 n_runs=5, subset_size=10)


def test_an_input_the_model_ignores_gives_nan_with_a_warning(image, targets):
    class Constant(nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], N_CLASSES, *x.shape[2:]) * torch.arange(N_CLASSES).view(1, -1, 1, 1, 1)

    with pytest.warns(UndefinedScoreWarning, match="`output drops` is constant"):
        res = faithfulness_correlation(Constant(), image, torch.randn(3, 12, 12, 12), targets, n_runs=5, subset_size=10)
    assert torch.isnan(res.correlation).all()


@pytest.mark.parametrize("size", [N_VOXELS, N_VOXELS + 1, 0])
def test_subset_size_out_of_range_is_refused(net, image, targets, size):
    with pytest.raises(ValueError, match="`subset_size`"):
        faithfulness_correlation(net, image, torch.randn(3, 12, 12, 12), targets, n_runs=5, subset_size=size)


@pytest.mark.parametrize(
    ("subsets", "match"),
    [
        (np.array([[0, 1], [2, 2]]), "distinct"),
        (np.array([[0, 1], [2, N_VOXELS]]), "index voxels"),
        (np.array([[0, 1]]), "n_runs >= 2"),
        (np.array([[0.0, 1.0], [2.0, 3.0]]), "integer"),
    ],
)
def test_bad_injected_subsets_are_refused(net, image, targets, subsets, match):
    with pytest.raises(ValueError, match=match):
        faithfulness_correlation(net, image, torch.randn(3, 12, 12, 12), targets, subsets=subsets)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": [0, 1]}, "one target per attribution map"),
        ({"targets": [0, 1, 5]}, "below 3"),
        ({"mask": "both"}, "`mask`"),
        ({"baseline": "mean"}, "`baseline`"),
        ({"baseline": float("nan")}, "`baseline`"),
        ({"n_runs": 1}, "`n_runs`"),
        ({"batch_size": 0}, "`batch_size`"),
    ],
)
def test_bad_arguments_are_refused(net, image, targets, kwargs, match):
    args = {"targets": targets, "n_runs": 5, "subset_size": 10} | kwargs
    t = args.pop("targets")
    with pytest.raises(ValueError, match=match):
        faithfulness_correlation(net, image, torch.randn(3, 12, 12, 12), t, **args)

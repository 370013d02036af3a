"""Effective complexity: known answers, agreement with Quantus, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agg2exp_lightning.evaluation import UndefinedScoreWarning, effective_complexity


def test_k_nonzero_voxels_of_equal_magnitude_give_k_over_n():
    a = torch.zeros(3, 6, 7, 8)
    flat = a.view(3, -1)
    for t, k in enumerate((1, 17, 300)):
        idx = torch.randperm(flat.shape[1])[:k]
        flat[t, idx] = torch.where(torch.rand(k) < 0.5, -2.0, 2.0)  # signs do not matter
    torch.testing.assert_close(effective_complexity(a), torch.tensor([1, 17, 300], dtype=torch.float64) / 336)


def test_threshold_is_strict_and_relative_to_the_largest_magnitude():
    a = torch.tensor([[10.0, -1.0, 1.0001, 0.5, 0.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 2, 2)
    # |a|/max = 1, 0.1 (not > 0.1), 0.10001, 0.05, 0...: two voxels count
    assert effective_complexity(a, eps=0.1).item() == pytest.approx(2 / 8)
    assert effective_complexity(a, eps=0.0).item() == pytest.approx(4 / 8)  # eps=0 counts the nonzero voxels


def test_agrees_with_quantus_effective_complexity_exactly():
    import quantus  # the reference: a dev dependency of `make test`, never skipped
    rng = np.random.default_rng(0)
    # signed maps with heavy tails so that the eps=0.1 cut falls inside the distribution
    a = (rng.standard_t(2, size=(4, 10, 12, 14)) * rng.random((4, 1, 1, 1)) * 5).astype(np.float32)
    a[3] *= rng.random((10, 12, 14)) < 0.05  # a sparse map
    ours = effective_complexity(torch.from_numpy(a), eps=0.1).numpy()
    metric = quantus.EffectiveComplexity(eps=0.1, abs=True, normalise=True, disable_warnings=True)
    # Quantus normalises all of a_batch by one max before batching: one map per call so each has its own.
    counts = [
        metric(model=None, x_batch=m[None, None], y_batch=np.zeros(1, int), a_batch=m[None, None], channel_first=True)[0]
        for m in a
    ]
    np.testing.assert_array_equal(ours * a[0].size, np.asarray(counts, dtype=float))
    assert 0 < ours.min() and ours.max() < 0.9 and len(set(ours)) > 2  # not trivial values


def test_all_zero_map_is_nan_with_a_warning():
    a = torch.rand(2, 4, 4, 4)
    a[1] = 0
    with pytest.warns(UndefinedScoreWarning, match="all-zero"):
        out = effective_complexity(a)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_attributions_are_refused(bad):
    a = torch.rand(2, 4, 4, 4)
    a[0, 1, 1, 1] = bad
    with pytest.raises(ValueError, match="`attributions`.*finite"):
        effective_complexity(a)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2, "0.1", True])
def test_bad_eps_is_refused(eps):
    with pytest.raises(ValueError, match="`eps`"):
        effective_complexity(torch.rand(1, 4, 4, 4), eps=eps)


def test_a_single_map_without_target_axis_is_refused():
    with pytest.raises(ValueError, match="`attributions` of shape \\[T, \\*spatial\\]"):
        effective_complexity(torch.rand(8))

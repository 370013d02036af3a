"""Average / maximum sensitivity: known answers, agreement with Quantus on the same noise, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ProxyModule, gradient_attributions

from agg2exp_lightning.evaluation import UndefinedScoreWarning, relative_distance, sensitivity, uniform_noise


def test_uniform_noise_shape_range_and_seed():
    u = uniform_noise((1, 5, 6, 7), n_samples=4, radius=0.1, rng=0)
    assert u.shape == (4, 1, 5, 6, 7) and u.dtype == np.float64
    assert np.abs(u).max() <= 0.1 and np.abs(u).max() > 0.09 and abs(u.mean()) < 0.01
    np.testing.assert_array_equal(u, uniform_noise((1, 5, 6, 7), n_samples=4, radius=0.1, rng=0))


def test_explanations_that_ignore_the_input_have_zero_sensitivity(image):
    fixed = torch.randn(3, 12, 12, 12)
    res = sensitivity(lambda x: fixed, image, rng=0)
    torch.testing.assert_close(res.average, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(res.maximum, torch.zeros(3, dtype=torch.float64))


def test_relative_distance_known_answers():
    a = torch.randn(2, 4, 4, 4)
    # max-normalisation removes a positive scale ...
    torch.testing.assert_close(relative_distance(a, 3.0 * a), torch.zeros(2, dtype=torch.float64))
    # ... but without it the distance is |1 - 3| = 2
    torch.testing.assert_close(relative_distance(a, 3.0 * a, normalise=False), torch.full((2,), 2.0, dtype=torch.float64))
    # an all-zero noisy map is at distance 1 (it stays zero, as in Quantus' normalise_by_max)
    torch.testing.assert_close(relative_distance(a, torch.zeros_like(a)), torch.ones(2, dtype=torch.float64))


def test_linear_explanation_has_the_distance_of_its_noise(image):
    # explain(x) = x (per target, with normalise=False): d_r = ||u_r|| / ||x||, known from the noise alone
    noise = uniform_noise(tuple(image.shape), n_samples=3, radius=0.1, rng=1)
    res = sensitivity(lambda x: x.repeat(2, 1, 1, 1), image, noise=noise, normalise=False)
    expected = np.linalg.norm(noise.reshape(3, -1), axis=1) / np.linalg.norm(image.numpy())
    np.testing.assert_allclose(res.distances.numpy(), np.tile(expected, (2, 1)), rtol=1e-5)
    np.testing.assert_allclose(res.average.numpy(), expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(res.maximum.numpy(), expected.max(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["AvgSensitivity", "MaxSensitivity"])
def test_agrees_with_quantus_on_the_same_noise(net, image, targets, kind, monkeypatch):
    import quantus  # the reference: a dev dependency of `make test`, never skipped
    noise = uniform_noise(tuple(image.shape), n_samples=3, radius=0.1, rng=2)

    def explain_fn(x):  # gradients of the proxies, mask from this input's own prediction (as explain() does)
        return gradient_attributions(net, x, targets)

    ours = sensitivity(explain_fn, image, noise=noise)

    def quantus_explain(model, inputs, targets, **kwargs):  # Quantus' calling convention, one instance per call
        return explain_fn(torch.from_numpy(inputs[0]))[int(targets[0])][None, None].numpy()

    metric = getattr(quantus, kind)(nr_samples=3, lower_bound=0.1, normalise=True, abs=False,
                                    return_aggregate=False, disable_warnings=True)
    reference = []
    a = explain_fn(image)
    for t in range(len(targets)):  # one map per call: Quantus normalises a whole a_batch by one max
        draws = iter(noise)
        monkeypatch.setattr(np.random, "uniform", lambda *args, **kwargs: next(draws).reshape(1, -1))
        proxy = ProxyModule(net, targets, None).eval()
        reference += list(metric(model=proxy, x_batch=image[None].numpy(), y_batch=np.array([t]),
                                 a_batch=a[t][None, None].numpy(), explain_func=quantus_explain,
                                 channel_first=True, device="cpu"))
        assert next(draws, None) is None  # Quantus used exactly our three noise draws
    expected = ours.average if kind == "AvgSensitivity" else ours.maximum
    np.testing.assert_allclose(expected.numpy(), reference, rtol=1e-5, atol=1e-7)
    assert min(reference) > 1e-3  # the explanations did move with the noise


# -- bad input ---------------------------------------------------------------------------------

def test_all_zero_clean_map_gives_nan_with_one_warning(image):
    a = torch.randn(2, 12, 12, 12)
    a[0] = 0
    with pytest.warns(UndefinedScoreWarning, match="all-zero") as record:
        res = sensitivity(lambda x: a + x, image, attributions=a, rng=0)
    assert len([w for w in record if issubclass(w.category, UndefinedScoreWarning)]) == 1
    assert torch.isnan(res.average[0]) and torch.isnan(res.maximum[0]) and torch.isfinite(res.average[1])


def test_noise_of_the_wrong_shape_is_refused(image):
    with pytest.raises(ValueError, match="`noise` of shape"):
        sensitivity(lambda x: x, image, noise=np.zeros((3, 12, 12, 12)))


def test_non_finite_noise_or_image_is_refused(image):
    noise = np.zeros((2, *image.shape))
    noise[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="`noise`.*finite"):
        sensitivity(lambda x: x, image, noise=noise)
    bad = image.clone()
    bad[0, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="`image`.*finite"):
        sensitivity(lambda x: x, bad, rng=0)


def test_explanations_of_another_shape_or_non_finite_are_refused(image):
    calls = iter([torch.ones(2, 12, 12, 12), torch.ones(2, 12, 12, 11)])
    with pytest.raises(ValueError, match="`explain_fn` to return attributions of shape"):
        sensitivity(lambda x: next(calls), image, rng=0)
    calls = iter([torch.ones(2, 12, 12, 12), torch.full((2, 12, 12, 12), float("nan"))])
    with pytest.raises(ValueError, match="explain_fn\\(noisy image 0\\).*finite"):
        sensitivity(lambda x: next(calls), image, rng=0)


@pytest.mark.parametrize(("kwargs", "match"), [({"radius": 0.0}, "`radius`"), ({"n_samples": 0}, "`n_samples`")])
def test_bad_noise_settings_are_refused(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sensitivity(lambda x: x, image, **kwargs)

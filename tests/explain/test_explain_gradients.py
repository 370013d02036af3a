"""Gradient methods against Captum on the same proxy, axioms, and the baselines."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

from agg2exp_lightning.explain import explain, make_baseline, proxy_output
from agg2exp_lightning.explain._gradients import IG_RULES, integration_points
from agg2exp_lightning.explain.baselines import gaussian_blur


def _proxy_fn(model, image):
    """Captum forward function: all classes' proxies with the mask of ``image`` held fixed."""
    with torch.no_grad():
        logits = model(image.unsqueeze(0) if image.dim() == 4 else image)
    labels = logits.argmax(1)[0]
    classes = list(range(logits.shape[1]))
    return (lambda x: proxy_output(model(x), labels, classes)), classes


def test_vanilla_gradient_matches_captum_saliency(conv_setup):
    model, image = conv_setup
    res = explain(model, image, method="vanilla_gradient")
    f, classes = _proxy_fn(model, image)
    for t, c in enumerate(classes):
        ref = Saliency(f).attribute(image[None], target=c, abs=False)[0, 0]
        torch.testing.assert_close(res.attributions[t], ref, rtol=1e-10, atol=1e-12)
    assert res.diagnostics["forward_passes"] == 1  # the prediction pass (with grad) serves all targets
    assert res.diagnostics["backward_passes"] == len(classes) - len(res.diagnostics["targets_absent"])


@pytest.mark.parametrize("rule", IG_RULES)
def test_integrated_gradients_matches_captum(conv_setup, rule):
    model, image = conv_setup
    targets = [0, 2, 3]
    res = explain(model, image, method="ig", n_steps=7, integration=rule, batch_size=3, targets=targets)
    f, _ = _proxy_fn(model, image)
    alphas, weights = integration_points(7, rule)
    for t, c in enumerate(targets):
        # float64 reference: Captum Saliency at the rule's points, weighted, times (x - 0)
        grads = [Saliency(f).attribute(float(a) * image[None], target=c, abs=False)[0, 0] for a in alphas]
        exact = image[0] * sum(float(w) * g for w, g in zip(weights, grads))
        torch.testing.assert_close(res.attributions[t], exact, rtol=1e-10, atol=1e-12)
        ref = IntegratedGradients(f).attribute(image[None], baselines=0.0, target=c, n_steps=7, method=rule)[0, 0]
        if rule == "riemann_trapezoid":
            # Captum's trapezoid weights are 1/n (halved at the ends), summing to (n-1)/n; the
            # trapezoid rule on n points spaced 1/(n-1) has weights 1/(n-1): ours = Captum * n/(n-1)
            ref = ref * 7 / 6
        # Captum casts its step sizes to float32 and builds Riemann points with float32 linspace,
        # so agreement with it is to float32 precision even on a float64 model
        scale = float(ref.abs().max())
        torch.testing.assert_close(res.attributions[t], ref, rtol=1e-5, atol=1e-6 * scale)


def test_integrated_gradients_with_tensor_baseline_matches_captum(conv_setup):
    model, image = conv_setup
    base = make_baseline(image[None], "blurred", blur_sigma=1.5)
    res = explain(model, image, method="ig", n_steps=5, baseline=base, targets=[1])
    f, _ = _proxy_fn(model, image)
    ref = IntegratedGradients(f).attribute(image[None], baselines=base, target=1, n_steps=5)[0, 0]
    torch.testing.assert_close(res.attributions[0], ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))  # float32 step sizes in Captum


def test_integrated_gradients_completeness_on_smooth_model(conv_setup):
    model, image = conv_setup
    res = explain(model, image, method="ig", n_steps=48)
    f, classes = _proxy_fn(model, image)
    with torch.no_grad():
        delta = f(image[None])[0] - f(torch.zeros_like(image)[None])[0]
    sums = res.attributions.flatten(1).sum(1)
    torch.testing.assert_close(sums, delta, rtol=1e-6, atol=1e-8)  # the axiom, to integration error
    gap = torch.tensor(res.diagnostics["ig_completeness_gap"], dtype=torch.float64)
    torch.testing.assert_close(gap, sums - delta, rtol=1e-6, atol=1e-9)  # the reported gap is that error
    coarse = explain(model, image, method="ig", n_steps=2, integration="riemann_left")
    assert max(map(abs, coarse.diagnostics["ig_completeness_gap"])) > 10 * max(map(abs, res.diagnostics["ig_completeness_gap"]))


def test_trapezoid_rule_is_complete_on_a_linear_model_where_captums_is_not(region_setup):
    model, image, *_ = region_setup
    res = explain(model, image, method="ig", n_steps=5, integration="riemann_trapezoid")
    assert max(map(abs, res.diagnostics["ig_completeness_relative"])) < 1e-12  # exact for a linear proxy
    f, _ = _proxy_fn(model, image)
    ref = IntegratedGradients(f).attribute(image[None], baselines=0.0, target=2, n_steps=5, method="riemann_trapezoid")
    assert ref.sum().item() == pytest.approx(0.8 * res.attributions[2].sum().item(), rel=1e-6)


def test_integration_points_sum_to_one_and_integrate_polynomials():
    for rule in IG_RULES:
        a, w = integration_points(6, rule)
        assert w.sum().item() == pytest.approx(1.0) and (a >= 0).all() and (a <= 1).all()
    a, w = integration_points(4, "gausslegendre")
    assert (w * a**7).sum().item() == pytest.approx(1 / 8, rel=1e-12)  # exact up to degree 2n-1


def test_smoothgrad_reduces_to_vanilla_gradient(conv_setup):
    model, image = conv_setup
    vg = explain(model, image, method="vg").attributions
    exact = explain(model, image, method="sg", stdev=0.0, n_samples=3).attributions
    torch.testing.assert_close(exact, vg, rtol=1e-12, atol=1e-14)
    tiny = explain(model, image, method="sg", stdev=1e-7, n_samples=3).attributions
    torch.testing.assert_close(tiny, vg, rtol=1e-4, atol=1e-6)


def test_smoothgrad_is_mean_of_captum_saliency_on_the_same_noise(conv_setup):
    model, image = conv_setup
    n, seed = 5, 11
    res = explain(model, image, method="sg", n_samples=n, seed=seed, batch_size=n, targets=[1, 3])
    sigma = 0.1 * float(image.max() - image.min())
    assert res.diagnostics["smoothgrad_sigma"] == pytest.approx(sigma)
    noise = torch.randn((n, 1, *image.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=image.dtype)
    f, _ = _proxy_fn(model, image)  # mask from the clean image, held fixed for the noisy copies
    for t, c in enumerate([1, 3]):
        ref = torch.stack([Saliency(f).attribute(image[None] + sigma * noise[i : i + 1], target=c, abs=False)[0, 0] for i in range(n)]).mean(0)
        torch.testing.assert_close(res.attributions[t], ref, rtol=1e-9, atol=1e-11)
    again = explain(model, image, method="sg", n_samples=n, seed=seed, batch_size=n, targets=[1, 3])
    assert torch.equal(again.attributions, res.attributions)


def test_batching_and_vectorized_backward_do_not_change_results(conv_setup):
    model, image = conv_setup
    one = explain(model, image, method="ig", n_steps=6, batch_size=1)
    many = explain(model, image, method="ig", n_steps=6, batch_size=4)
    vmapped = explain(model, image, method="ig", n_steps=6, batch_size=4, vectorize=True)
    torch.testing.assert_close(many.attributions, one.attributions, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vmapped.attributions, one.attributions, rtol=1e-10, atol=1e-12)
    assert one.diagnostics["forward_samples"] == many.diagnostics["forward_samples"] == 1 + 6 + 1
    assert vmapped.diagnostics["backward_passes"] == 2  # one vmapped backward per batch of 4 + 2


def test_absent_class_gets_zero_gradient_without_a_backward_pass(region_setup):
    model, image, *_ = region_setup
    # a 5th class never predicted: append a constant -100 logit channel
    wide = torch.nn.Sequential()
    wide.forward = lambda x: torch.cat([model(x), torch.full_like(x, -100.0)], 1)  # type: ignore[method-assign]
    res = explain(wide, image, method="sg", n_samples=2)
    assert res.diagnostics["targets_absent"] == [4]
    assert (res.attributions[4] == 0).all() and torch.isnan(res.roi[4]).all()
    assert res.diagnostics["backward_passes"] == 4 * 1  # 2 samples in one batch, 4 present targets


def test_baselines():
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 1, 9, 7, 8), generator=g, dtype=torch.float64)
    from scipy.ndimage import gaussian_filter

    ref = gaussian_filter(image[0, 0].numpy(), 1.3, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(image, 1.3)[0, 0].numpy(), ref, rtol=1e-10, atol=1e-12)
    ref_wide = gaussian_filter(image[0, 0].numpy(), 3.0, mode="nearest", truncate=4.0)  # radius > axis length
    np.testing.assert_allclose(make_baseline(image, "blurred", blur_sigma=3.0)[0, 0].numpy(), ref_wide, rtol=1e-10, atol=1e-12)
    assert (make_baseline(image, "mean") == image.mean()).all()
    assert (make_baseline(image, "constant", value=-2.0) == -2.0).all() and (make_baseline(image, 0.5) == 0.5).all()
    noisy = make_baseline(image, "gaussian", sigma=0.2, generator=torch.Generator().manual_seed(3))
    assert (noisy - image).std().item() == pytest.approx(0.2, rel=0.1)
    with pytest.raises(ValueError, match="did you mean 'blurred'"):
        make_baseline(image, "blured")
    with pytest.raises(ValueError, match="`baseline`"):
        make_baseline(image, torch.zeros(2, 2))

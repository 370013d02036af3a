"""Window-by-window attributions equal autograd through MONAI's sliding_window_inference."""
from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, Saliency
from monai.inferers import sliding_window_inference

from agg2exp_lightning.explain import explain, proxy_output
from agg2exp_lightning.explain._kernelshap import cube_feature_mask
from agg2exp_lightning.explain._sliding_window import blended_logits, window_plan

from explain_models import SmoothConvNet, shapley_from_values  # noqa: I001 - beside this file

ROI = (8, 8, 8)
#: (image size, overlap, mode, sigma_scale, sw_batch_size): overlapping windows, a volume
#: smaller than the window along one axis (MONAI pads it), sizes off the window grid.
CASES = [
    ((14, 11, 9), 0.5, "constant", 0.125, 3),
    ((14, 11, 9), 0.5, "gaussian", 0.2, 2),
    ((6, 13, 10), 0.25, "gaussian", 0.125, 1),
    ((6, 13, 10), 0.25, "constant", 0.125, 4),
]


def _swi(model, x, overlap, mode, sigma, swb):
    return sliding_window_inference(x, ROI, swb, model, overlap=overlap, mode=mode, sigma_scale=sigma)


@pytest.mark.parametrize(("size", "overlap", "mode", "sigma", "swb"), CASES)
def test_blended_logits_equal_monai(size, overlap, mode, sigma, swb):
    model = SmoothConvNet(classes=3)
    x = torch.rand(2, 1, *size, dtype=torch.float64)
    plan = window_plan(size, ROI, sw_batch_size=swb, overlap=(overlap,) * 3, mode=mode, sigma_scale=(sigma,) * 3, dtype=x.dtype)
    with torch.no_grad():
        ref = _swi(model, x, overlap, mode, sigma, swb)
        torch.testing.assert_close(blended_logits(model, x, plan), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("size", "overlap", "mode", "sigma", "swb"), CASES)
def test_vanilla_gradient_equals_autograd_through_sliding_window_inference(size, overlap, mode, sigma, swb):
    model = SmoothConvNet(classes=3)
    image = torch.rand(1, *size, dtype=torch.float64)
    res = explain(model, image, method="vg", roi_size=ROI, overlap=overlap, mode=mode, sigma_scale=sigma, sw_batch_size=swb)
    x = image[None].clone().requires_grad_(True)
    logits = _swi(model, x, overlap, mode, sigma, swb)
    labels = logits.detach().argmax(1)[0]
    assert torch.equal(res.prediction, labels)
    for c in range(3):
        (ref,) = torch.autograd.grad(proxy_output(logits, labels, [c]).sum(), x, retain_graph=True)
        torch.testing.assert_close(res.attributions[c], ref[0, 0], rtol=1e-10, atol=1e-12)
    assert res.diagnostics["windows"] == len(window_plan(size, ROI, overlap=(overlap,) * 3).slices)


def test_integrated_gradients_and_captum_class_through_windows():
    model = SmoothConvNet(classes=3)
    image = torch.rand(1, 14, 11, 9, dtype=torch.float64)
    window = dict(roi_size=ROI, overlap=0.5, mode="gaussian", sw_batch_size=2)
    ig = explain(model, image, method="ig", n_steps=3, integration="riemann_right", **window)
    with torch.no_grad():
        labels = _swi(model, image[None], 0.5, "gaussian", 0.125, 2).argmax(1)[0]
    f = lambda x: proxy_output(_swi(model, x, 0.5, "gaussian", 0.125, 2), labels, [0, 1, 2])  # noqa: E731
    for c in range(3):
        grads = [Saliency(f).attribute(a * image[None], target=c, abs=False)[0, 0] for a in (1 / 3, 2 / 3, 1.0)]
        torch.testing.assert_close(ig.attributions[c], image[0] * sum(grads) / 3, rtol=1e-10, atol=1e-12)
    # any Captum class on the windowed proxy (one call per target): Input x Gradient = x * VG
    vg = explain(model, image, method="vg", **window).attributions
    ixg = explain(model, image, method=InputXGradient, **window)
    torch.testing.assert_close(ixg.attributions, image * vg, rtol=1e-10, atol=1e-12)
    assert ixg.method == "InputXGradient"


def test_smoothgrad_through_windows_reduces_to_vanilla_gradient():
    model = SmoothConvNet(classes=3)
    image = torch.rand(1, 6, 13, 10, dtype=torch.float64)
    window = dict(roi_size=ROI, overlap=0.25, sw_batch_size=3)
    vg = explain(model, image, method="vg", **window)
    sg = explain(model, image, method="sg", stdev=0.0, n_samples=2, batch_size=2, **window)
    torch.testing.assert_close(sg.attributions, vg.attributions, rtol=1e-12, atol=1e-14)
    # one window-batch forward serves all targets: forward samples = windows x (1 + samples)
    assert sg.diagnostics["forward_samples"] == vg.diagnostics["windows"] * 3


def test_kernelshap_through_windows_is_exact_shapley_of_the_blended_proxy():
    model = SmoothConvNet(classes=3)
    image = torch.rand(1, 14, 11, 9, dtype=torch.float64)
    res = explain(model, image, method="ks_cubes", cubes_per_axis=(2, 1, 1), n_samples=2, roi_size=ROI, overlap=0.5)
    mask, _ = cube_feature_mask((14, 11, 9), (2, 1, 1))
    with torch.no_grad():
        f = lambda x: _swi(model, x[None], 0.5, "constant", 0.125, 1)  # noqa: E731
        labels = f(image).argmax(1)[0]
        v = {s: proxy_output(f(image * torch.tensor([float(0 in s), float(1 in s)], dtype=image.dtype)[mask]), labels, [0, 1, 2])[0]
             for s in [(), (0,), (1,), (0, 1)]}
    phi0 = 0.5 * (v[(0,)] - v[()]) + 0.5 * (v[(0, 1)] - v[(1,)])
    phi1 = 0.5 * (v[(1,)] - v[()]) + 0.5 * (v[(0, 1)] - v[(0,)])
    got = torch.tensor(res.diagnostics["shapley_values"], dtype=torch.float64)
    torch.testing.assert_close(got, torch.stack([phi0, phi1]), rtol=1e-9, atol=1e-9)


def _windowed_brute_force_shapley(model, image, feature_mask, targets, **swi):
    """Shapley values over all subsets of features, the proxy on MONAI's blended prediction: ``[M, T]``."""
    with torch.no_grad():
        labels = sliding_window_inference(image[None], ROI, predictor=model, **swi).argmax(1)[0]
        m = int(feature_mask.max()) + 1

        def value_of(s):
            on = torch.zeros(m, dtype=image.dtype)
            on[list(s)] = 1
            logits = sliding_window_inference((image * on[feature_mask])[None], ROI, predictor=model, **swi)
            return proxy_output(logits, labels, targets)[0]

        return shapley_from_values(value_of, m, len(targets))


def test_windowed_kernelshap_enumeration_equals_shapley_values_through_sliding_window_inference():
    """4 cubes in a 16x16x8 volume cut into 8^3 windows at overlap 0.5 (3x3x1 windows): every
    coalition enumerated, against the Shapley formula on MONAI's blended output; window reuse runs
    each window once per distinct pattern of the cubes it covers."""
    model = SmoothConvNet(classes=3)
    image = torch.rand(1, 16, 16, 8, dtype=torch.float64)
    mask, m = cube_feature_mask((16, 16, 8), (2, 2, 1))
    swi = dict(sw_batch_size=2, overlap=0.5, mode="gaussian", sigma_scale=0.125)
    exact = _windowed_brute_force_shapley(model, image, mask, [0, 1, 2], **swi)
    res = explain(model, image, method="ks_cubes", cubes_per_axis=(2, 2, 1), n_samples=14, roi_size=ROI, **swi)
    assert res.diagnostics["kernelshap_exact"] and res.diagnostics["windows"] == 9
    torch.testing.assert_close(torch.tensor(res.diagnostics["shapley_values"], dtype=torch.float64), exact, rtol=1e-9, atol=1e-9)
    # a window covering k of the 4 cubes has at most 2^k distinct inputs (16 coalitions incl. the empty one)
    covered = [1, 2, 1, 2, 4, 2, 1, 2, 1]  # cubes per window of the 3x3 grid (the middle row/column straddles)
    assert res.diagnostics["forward_samples"] == 9 + sum(min(2**k, 15) for k in covered)  # prediction + distinct windows
    assert res.diagnostics["kernelshap_window_passes_saved"] == 15 * 9 - sum(min(2**k, 15) for k in covered)


@pytest.mark.parametrize("method", ["ks_cubes", "ks_semantic"])
def test_window_reuse_gives_the_same_attributions_with_fewer_passes(method):
    """3x3x1 windows, 18 cubes in 40 sampled coalitions or the enumerated semantic ones: the same Shapley
    values with and without reuse, and with reuse fewer window passes."""
    model = SmoothConvNet(classes=4)
    image = torch.rand(1, 16, 16, 8, dtype=torch.float64)
    opts = dict(n_samples=40, seed=3, roi_size=ROI, overlap=0.5, sw_batch_size=3, mode="gaussian")
    if method == "ks_cubes":
        opts["cubes_per_axis"] = (3, 3, 2)
    on = explain(model, image, method=method, **opts)
    off = explain(model, image, method=method, reuse_windows=False, **opts)
    assert on.diagnostics["kernelshap_exact"] == (method == "ks_semantic") and on.diagnostics["windows"] == 9
    torch.testing.assert_close(torch.tensor(on.diagnostics["shapley_values"]), torch.tensor(off.diagnostics["shapley_values"]),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(on.attributions, off.attributions, rtol=1e-12, atol=1e-14)
    assert on.diagnostics["forward_samples"] < off.diagnostics["forward_samples"]
    saved_on, saved_off = on.diagnostics["kernelshap_window_passes_saved"], off.diagnostics["kernelshap_window_passes_saved"]
    assert on.diagnostics["forward_samples"] + saved_on == off.diagnostics["forward_samples"] + saved_off
    # without reuse: every window holding a target's voxels, once per coalition (plus the prediction's windows)
    n = on.diagnostics["kernelshap_samples"]
    assert off.diagnostics["forward_samples"] + saved_off == 9 + 9 * (n + 1)

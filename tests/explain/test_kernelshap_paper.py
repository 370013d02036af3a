"""The paper protocol's KernelSHAP: Captum's estimator (same draws as Captum), the authors' cubes, absent
labels as features, and a fixed prediction for noisy copies."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from captum.attr import KernelShap
from torch import nn

from agg2exp_lightning.explain import explain, proxy_output
from agg2exp_lightning.explain._kernelshap import (
    CAPTUM_INF_WEIGHT,
    kernel_sampled_coalitions,
    modulo_cube_mask,
    sample_coalitions,
    solve_linear_regression,
    solve_shapley,
)

from explain_models import RegionNet, SmoothConvNet  # noqa: I001 - beside this file

#: No probe pass, no memory refusal: these models are tiny.
FAST = dict(max_memory=math.inf, pass_bytes_per_voxel=1.0)


def _captum_maps(model, image, labels, feature_mask, targets, n_samples, seed):
    """Captum's KernelShap of each target's proxy (mask ``labels`` fixed), torch's global generator seeded
    with ``seed`` before each target, as a fresh run of the authors' script would be."""
    f = lambda x: proxy_output(model(x), labels, list(range(4)))  # noqa: E731
    maps = []
    for c in targets:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Minimum element in feature mask is not 0"
            maps.append(KernelShap(f).attribute(image[None], baselines=0.0, target=c, feature_mask=feature_mask[None, None],
                                                n_samples=n_samples, perturbations_per_eval=n_samples)[0, 0])
    return torch.stack(maps)


@pytest.fixture
def smooth_setup():
    model = SmoothConvNet(dtype=torch.float32)  # Captum fits in float32 anyway; float32 convolutions are fast
    image = torch.rand(1, 7, 6, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(image[None]).argmax(1)[0]
    return model, image, labels


def test_paper_cubes_equal_captum_kernelshap_for_the_same_seed_class_by_class(smooth_setup):
    """Same coalitions as Captum draws (torch's generator seeded alike), one set for all three targets;
    Captum fits in float32, hence the tolerance (1e-5 of the largest value; the values agree to ~1e-6)."""
    model, image, labels = smooth_setup
    mask, m = modulo_cube_mask((7, 6, 5), 8)  # side 5 // 2 = 2: 4 x 3 x 3 = 36 cubes on 8 ids
    assert m == 8
    targets, n = [0, 1, 2], 40
    ours = {seed: explain(model, image, method="ks_cubes", protocol="paper", cubes_per_axis=2, n_samples=n, seed=seed,
                          targets=targets, **FAST) for seed in (0, 1)}
    captum = _captum_maps(model, image, labels, mask, targets, n, 0)
    scale = float(captum.abs().max())
    torch.testing.assert_close(ours[0].attributions, captum, rtol=0, atol=1e-5 * scale)
    assert (ours[1].attributions - captum).abs().max() > 100 * 1e-5 * scale  # another seed: other draws, other values
    assert ours[0].diagnostics["kernelshap_features"] == 8 and ours[0].diagnostics["kernelshap_estimator"] == "captum"
    # one set of passes for all targets: the prediction, the empty coalition, n - 2 sampled ones
    assert ours[0].diagnostics["forward_samples"] == 1 + 1 + (n - 2) and ours[0].diagnostics["kernelshap_samples"] == n - 2


def test_paper_semantic_features_equal_captum_with_the_label_map_as_feature_mask(smooth_setup):
    """The authors pass the predicted label map itself as Captum's feature mask: features are the label ids
    from the lowest to the highest (Captum shifts the lowest to 0), absent ones included."""
    model, image, _ = smooth_setup
    gap = torch.zeros(7, 6, 5, dtype=torch.long)
    gap[:3], gap[:, :2] = 1, 3  # label 2 absent
    high = gap.clone()
    high[gap == 0] = 2  # labels 1, 2, 3 (0 absent: Captum shifts the ids down by 1); hold 4 classes
    for prediction, features in ((gap, [0, 1, 2, 3]), (high, [1, 2, 3])):
        ours = explain(model, image, method="ks_semantic", protocol="paper", prediction=prediction, n_samples=12, seed=3,
                       targets=[0, 1, 3], **FAST)
        assert ours.diagnostics["kernelshap_feature_labels"] == features
        captum = _captum_maps(model, image, prediction, prediction, [0, 1, 3], 12, 3)
        torch.testing.assert_close(ours.attributions, captum, rtol=0, atol=1e-5 * float(captum.abs().max()))
    phi = torch.tensor(explain(model, image, method="ks_semantic", protocol="paper", prediction=gap, n_samples=12, seed=3,
                               targets=[0, 1, 3], **FAST).diagnostics["shapley_values"])
    assert phi[2].abs().max() < 0.05 * phi.abs().max()  # the absent label: 0 up to the estimator's noise
    corrected = explain(model, image, method="ks_semantic", prediction=gap, n_samples=12, seed=3, targets=[0, 1, 3], **FAST)
    assert corrected.diagnostics["kernelshap_feature_labels"] == [0, 1, 3]


def test_absent_labels_get_exactly_zero_for_an_additive_model():
    """RegionNet is additive in its regions: the regression fits exactly, so the absent label 2's value is 0
    (to rounding) under paper, and both protocols give the exact Shapley values of the present regions."""
    regions = torch.zeros(6, 6, 6, dtype=torch.long)
    regions[:2], regions[3:, :3] = 1, 3
    alpha = torch.tensor([1.0, 2.0, 0.7, 1.5], dtype=torch.float64)
    beta = torch.tensor([0.5, 1.0, 0.0, 0.5], dtype=torch.float64)
    model = RegionNet(regions, alpha, beta, context=[1, 3, 0, 0])  # no context is the empty region 2
    image = torch.rand(1, 6, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    paper = explain(model, image, method="ks_semantic", protocol="paper", n_samples=20, seed=0, targets=[0, 1, 3], **FAST)
    corrected = explain(model, image, method="ks_semantic", n_samples=20, seed=0, targets=[0, 1, 3], **FAST)
    assert paper.diagnostics["kernelshap_feature_labels"] == [0, 1, 2, 3]
    assert corrected.diagnostics["kernelshap_feature_labels"] == [0, 1, 3]
    phi_paper = torch.tensor(paper.diagnostics["shapley_values"], dtype=torch.float64)
    phi_corrected = torch.tensor(corrected.diagnostics["shapley_values"], dtype=torch.float64)
    assert phi_paper[2].abs().max() < 1e-9 * phi_paper.abs().max()
    torch.testing.assert_close(phi_paper[[0, 1, 3]], phi_corrected, rtol=1e-8, atol=1e-8)
    x = image[0]
    for t, k in enumerate([0, 1, 3]):  # own region: alpha_k * sum of its intensities
        assert phi_paper[[0, 1, 2, 3].index(k), t] == pytest.approx(float(alpha[k] * x[regions == k].sum()), rel=1e-8)


def _authors_cubes(shape, n):
    """The published description, written out: side = min(x, y, z) // int(pow(n, 1/3)); cubes placed from
    the origin in steps of the side (x outer, z inner), the running cube number modulo n as the id."""
    side = min(shape) // int(pow(n, 1 / 3))
    out = np.zeros(shape, dtype=np.int64)
    number = 0
    for i in range(0, shape[0], side):
        for j in range(0, shape[1], side):
            for k in range(0, shape[2], side):
                out[i : i + side, j : j + side, k : k + side] = number % n
                number += 1
    return out, number


@pytest.mark.parametrize(("shape", "n"), [((23, 17, 11), 27), ((20, 18, 15), 512), ((9, 14, 10), 64)])
def test_modulo_cube_mask_equals_the_authors_construction_on_non_cubic_volumes(shape, n):
    expected, cubes = _authors_cubes(shape, n)
    mask, m = modulo_cube_mask(shape, n)
    assert np.array_equal(mask.numpy(), expected)
    assert m == min(n, cubes) == int(expected.max()) + 1


def test_modulo_cube_mask_of_the_issue_example_512_components_on_234x234x180():
    """int(512 ** (1/3)) is 7 (the float cube root is 7.999...): side 180 // 7 = 25, 10 * 10 * 8 = 800 cubes
    folded onto 512 ids, the last cubes along z 5 voxels thick, one id on cubes far apart."""
    assert int(pow(512, 1 / 3)) == 7
    mask, m = modulo_cube_mask((234, 234, 180), 512)
    assert m == 512
    assert bool((mask[:25, :25, :25] == 0).all()) and int(mask[25, 0, 0]) == 80 and int(mask[0, 0, 25]) == 1
    assert int(mask[6 * 25, 4 * 25, 0]) == 0  # cube number 6 * 80 + 4 * 8 = 512 -> id 0 again
    assert int(mask[0, 0, 175]) == 7 and int(mask[0, 0, 174]) == 6  # 7 full z-cubes of 25, then one of 5
    assert torch.bincount(mask.flatten()).min() > 0


def test_modulo_cube_mask_refuses_a_volume_thinner_than_the_cube_count():
    with pytest.raises(ValueError, match=r"at least 7 voxels.*512 cube components.*\(30, 30, 6\)"):
        modulo_cube_mask((30, 30, 6), 512)
    with pytest.raises(ValueError, match="`cubes_per_axis`.*one int.*modulo"):
        explain(nn.Conv3d(1, 2, 1), torch.rand(1, 6, 6, 6), method="ks_cubes", protocol="paper", cubes_per_axis=(2, 2, 1), **FAST)


def test_captum_estimator_needs_one_sample_more_than_features_and_takes_no_pairs(smooth_setup):
    model, image, _ = smooth_setup
    with pytest.raises(ValueError, match=r"`n_samples` >= 9 \(the number of cubes, 8, plus the intercept\).*got 8"):
        explain(model, image, method="ks_cubes", protocol="paper", cubes_per_axis=2, n_samples=8, **FAST)
    with pytest.raises(ValueError, match="`paired`.*captum"):
        explain(model, image, method="ks_cubes", protocol="paper", cubes_per_axis=2, n_samples=20, paired=True, **FAST)
    mixed = explain(model, image, method="ks_cubes", protocol="paper", estimator="constrained", cubes_per_axis=2, n_samples=20,
                    seed=0, **FAST)
    assert mixed.diagnostics["protocol"]["overridden"] == ["kernelshap_estimator"]
    assert max(map(abs, mixed.diagnostics["kernelshap_efficiency_gap"])) < 1e-9


def test_paired_constrained_estimator_has_lower_variance_than_captums():
    """Over 50 seeds on a game with pairwise and three-way interactions (exact Shapley values in closed
    form), 40 coalitions each: the paired, efficiency-constrained estimator (corrected) varies less than
    Captum's (paper) for every feature, and both centre on the exact values; without the three-way terms
    the paired estimator is exact from one draw."""
    m, n, seeds = 8, 40, 50
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, dtype=torch.float64, generator=g)
    b = torch.randn(m, m, dtype=torch.float64, generator=g).triu(1)
    c = torch.randn(m, dtype=torch.float64, generator=g)
    triples = [(0, 1, 2), (3, 4, 5), (2, 5, 7)]

    def value(z):
        out = z @ a + ((z @ b) * z).sum(1)
        for (i, j, k), w in zip(triples, c):
            out = out + w * z[:, i] * z[:, j] * z[:, k]
        return out[:, None]

    exact = a + (b + b.T).sum(1) / 2  # a pair's interaction split in two, a triple's in three
    for (i, j, k), w in zip(triples, c):
        exact[[i, j, k]] += w / 3
    ones, zeros = torch.ones(1, m, dtype=torch.float64), torch.zeros(1, m, dtype=torch.float64)
    weights = torch.cat([torch.full((2,), CAPTUM_INF_WEIGHT, dtype=torch.float64), torch.ones(n - 2, dtype=torch.float64)])
    paper, corrected = [], []
    for seed in range(seeds):
        z = torch.cat([ones, zeros, kernel_sampled_coalitions(m, n - 2, torch.Generator().manual_seed(seed))])
        paper.append(solve_linear_regression(z, weights, value(z))[:, 0])
        z, w, exact_enum = sample_coalitions(m, n, generator=torch.Generator().manual_seed(seed))
        assert not exact_enum
        corrected.append(solve_shapley(z, w, value(z), value(ones)[0], value(zeros)[0])[:, 0])
    paper, corrected = torch.stack(paper), torch.stack(corrected)
    assert bool((corrected.var(0) < paper.var(0)).all())
    pairwise = lambda z: (z @ a + ((z @ b) * z).sum(1))[:, None]  # noqa: E731 - the same game without the triples
    z, w, _ = sample_coalitions(m, n, generator=torch.Generator().manual_seed(0))
    only_pairs = solve_shapley(z, w, pairwise(z), pairwise(ones)[0], pairwise(zeros)[0])[:, 0]
    torch.testing.assert_close(only_pairs, a + (b + b.T).sum(1) / 2, rtol=1e-9, atol=1e-9)  # pairs: exact for such games
    for est in (paper, corrected):  # centred on the exact values: within 4 standard errors (and a small bias)
        se = est.std(0) / seeds**0.5
        assert bool(((est.mean(0) - exact).abs() < 4 * se + 0.05 * exact.abs().max()).all())


class _Threshold(nn.Module):
    """Class 0 where x > 0.5, else class 1: logits ``[x, 0.5]``, so the proxy gradient of class 0 is its mask."""

    def forward(self, x):
        return torch.cat([x, torch.full_like(x, 0.5)], dim=1)


def test_a_given_prediction_is_held_as_the_proxy_mask():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 6, 6, 6, generator=g)
    noisy = clean + (torch.rand(clean.shape, generator=g) - 0.5) * 0.4
    clean_labels = (clean[0] <= 0.5).long()
    assert not torch.equal(clean_labels, (noisy[0] <= 0.5).long())  # the noise changes the prediction
    held = explain(_Threshold(), noisy, method="vg", targets=[0], prediction=clean_labels, **FAST)
    own = explain(_Threshold(), noisy, method="vg", targets=[0], **FAST)
    torch.testing.assert_close(held.attributions[0], (clean_labels == 0).float())
    torch.testing.assert_close(own.attributions[0], (noisy[0] <= 0.5).logical_not().float())
    assert torch.equal(held.prediction, clean_labels)
    with pytest.raises(ValueError, match=r"`prediction` to hold class ids < 2.*found 5"):
        explain(_Threshold(), noisy, method="vg", prediction=clean_labels + 4, **FAST)
    with pytest.raises(ValueError, match=r"`prediction` of shape \(6, 6, 6\)"):
        explain(_Threshold(), noisy, method="vg", prediction=clean_labels[:3], **FAST)

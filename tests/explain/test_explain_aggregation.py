"""RoI importance: hand-computed answers, an independent numpy reference, NaN rules, merging."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agg2exp_lightning.explain import explain, mean_roi_over_scans, merge_regions, roi_importance
from agg2exp_lightning.labels import LUNG_LOBES, THORAX_CLASSES


def _reference(attr: np.ndarray, regions: np.ndarray, r: int, reduce: str, sign: str) -> np.ndarray:
    """Loop-by-loop numpy version of the definition."""
    s = {"abs": np.abs(attr), "positive": np.maximum(attr, 0), "negative": np.maximum(-attr, 0)}[sign]
    out = np.full((attr.shape[0], r), np.nan)
    for t in range(attr.shape[0]):
        total = s[t].sum()
        for b in range(r):
            inside = regions == b
            if not inside.any():
                continue
            if reduce == "mass" and total > 0:
                out[t, b] = s[t][inside].sum() / total
            elif reduce == "mean":
                out[t, b] = s[t][inside].mean()
    return out


def test_hand_computed_shares():
    a = torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    regions = torch.tensor([0, 0, 1, 2])
    mass = roi_importance(a, regions, 4)
    assert torch.allclose(mass[0, :3], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert torch.isnan(mass[0, 3])  # region 3 is empty
    assert torch.isnan(mass[1]).all()  # all-zero map: no shares
    mean = roi_importance(a, regions, 4, reduce="mean")
    assert torch.allclose(mean[0, :3], torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    assert torch.isnan(mean[:, 3]).all() and (mean[1, :3] == 0).all()
    pos = roi_importance(a, regions, 3, sign="positive")
    assert torch.allclose(pos[0], torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    neg = roi_importance(a, regions, 3, sign="negative")
    assert torch.allclose(neg[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("reduce", ["mass", "mean"])
@pytest.mark.parametrize("sign", ["abs", "positive", "negative"])
def test_matches_numpy_reference(reduce, sign):
    g = np.random.default_rng(1)
    attr = g.normal(size=(3, 5, 6, 7))
    regions = g.integers(0, 5, size=(5, 6, 7))
    regions[regions == 3] = 2  # region 3 empty
    got = roi_importance(torch.from_numpy(attr), torch.from_numpy(regions), 6, reduce, sign).numpy()
    np.testing.assert_allclose(got, _reference(attr, regions, 6, reduce, sign), rtol=1e-12, equal_nan=True)
    if reduce == "mass":
        assert np.allclose(np.nansum(got, 1), 1.0)


def test_negative_labels_count_in_total_only_and_extra_masks():
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    regions = torch.tensor([-1, 0, 0, 1])
    extra = torch.tensor([[True, True, False, False]])
    out = roi_importance(a, regions, 2, extra_masks=extra)
    assert torch.allclose(out, torch.tensor([[0.5, 0.25, 0.5]], dtype=torch.float64))
    out_mean = roi_importance(a, regions, 2, reduce="mean", extra_masks=[extra[0]])
    assert torch.allclose(out_mean, torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64))


def test_merge_lobes_into_lungs_preserves_mass():
    g = torch.Generator().manual_seed(0)
    regions = torch.randint(0, len(THORAX_CLASSES), (6, 6, 6), generator=g)
    attr = torch.randn(2, 6, 6, 6, generator=g, dtype=torch.float64)
    merged, names = merge_regions(regions, {"lungs": LUNG_LOBES}, THORAX_CLASSES)
    assert len(names) == len(THORAX_CLASSES) - 4 and names[2] == "lungs" and names[3] == "trachea"
    before = roi_importance(attr, regions, len(THORAX_CLASSES))
    after = roi_importance(attr, merged, len(names))
    lobe_ids = [THORAX_CLASSES.index(n) for n in LUNG_LOBES]
    assert torch.allclose(after[:, 2], before[:, lobe_ids].sum(1))
    assert torch.allclose(after[:, 3:], before[:, 7:])
    assert torch.equal(merge_regions(torch.tensor([-1, 3]), {"x": [0, 1]}, "abcd")[0], torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="groups"):
        merge_regions(regions, {"a": [0, 1], "b": [1, 2]}, THORAX_CLASSES)
    with pytest.raises(ValueError, match="groups"):
        merge_regions(regions, {"a": ["lungz"]}, THORAX_CLASSES)


def test_global_importance_is_nan_aware_mean():
    scans = [torch.tensor([[0.2, np.nan], [np.nan, np.nan]]), torch.tensor([[0.4, 0.6], [np.nan, 1.0]])]
    got = mean_roi_over_scans(scans)
    expected = np.array([[0.3, 0.6], [np.nan, 1.0]])
    np.testing.assert_allclose(got.numpy(), expected, equal_nan=True)
    np.testing.assert_allclose(mean_roi_over_scans(torch.stack(scans)).numpy(), expected, equal_nan=True)
    with pytest.raises(ValueError, match="per_scan"):
        mean_roi_over_scans([torch.zeros(2, 2), torch.zeros(2, 3)])


def test_bad_arguments_are_named():
    a = torch.ones(1, 4)
    with pytest.raises(ValueError, match="`regions`"):
        roi_importance(a, torch.zeros(5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="`regions`"):
        roi_importance(a, torch.tensor([0, 1, 2, 3]), 2)  # label >= num_regions
    with pytest.raises(ValueError, match="`regions`"):
        roi_importance(a, torch.zeros(4), 2)  # float labels
    with pytest.raises(ValueError, match="`reduce`"):
        roi_importance(a, torch.zeros(4, dtype=torch.long), 1, reduce="sum")
    with pytest.raises(ValueError, match="`sign`"):
        roi_importance(a, torch.zeros(4, dtype=torch.long), 1, sign="abs_")
    with pytest.raises(ValueError, match="`attributions`"):
        roi_importance(torch.tensor([[float("nan"), 0, 0, 0]]), torch.zeros(4, dtype=torch.long), 1)


def test_known_shares_of_region_model(region_setup):
    """Vanilla gradient of RegionNet: own share alpha/(alpha+beta), context share beta/(alpha+beta)."""
    model, image, regions, alpha, beta, context = region_setup
    res = explain(model, image, method="vg")
    assert torch.equal(res.prediction, regions)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for k in range(4):
        expected[k, k] += alpha[k] / (alpha[k] + beta[k])
        expected[k, context[k]] += beta[k] / (alpha[k] + beta[k])
    torch.testing.assert_close(res.roi, expected, rtol=1e-10, atol=1e-12)
    # SmoothGrad of a linear proxy is the vanilla gradient, whatever the noise
    sg = explain(model, image, method="sg", n_samples=5, noise_level=0.5)
    torch.testing.assert_close(sg.roi, expected, rtol=1e-10, atol=1e-12)
    # mean |gradient| per region: alpha on the own region, beta |R_k| / |R_j| on the context region
    sizes = torch.bincount(regions.flatten(), minlength=4).double()
    for k in range(1, 4):
        j = context[k]
        assert res.roi_mean[k, k] == pytest.approx(float(alpha[k]))
        assert res.roi_mean[k, j] == pytest.approx(float(beta[k] * sizes[k] / sizes[j]))


def test_explain_regions_argument_and_extra_masks(region_setup):
    model, image, regions, *_ = region_setup
    halves = (torch.arange(8) < 4).view(8, 1, 1).expand(8, 8, 8)
    res = explain(model, image, method="vg", regions=halves.long(), extra_masks={"core": regions == 3})
    assert res.roi.shape == (4, 5) and res.region_names[-1] == "core"
    assert torch.isnan(res.roi[:, 2:4]).all()  # regions 2, 3 of the halves map are empty
    grads = explain(model, image, method="vg").attributions.abs()
    torch.testing.assert_close(res.roi[:, 4], grads[:, regions == 3].sum(1).double() / grads.flatten(1).sum(1).double())

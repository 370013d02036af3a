"""Bad input gives a ValueError naming the argument; method names and options resolve."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from agg2exp_lightning.explain import explain, resolve_method_name

from explain_models import SmoothConvNet  # noqa: I001 - beside this file


@pytest.fixture
def net():
    return SmoothConvNet(classes=3, dtype=torch.float32)


def test_method_names_and_aliases():
    for alias, name in [("vg", "vanilla_gradient"), ("SG", "smoothgrad"), ("ig", "integrated_gradients"),
                        ("ks-cubes", "kernelshap_cubes"), ("ks_semantic", "kernelshap_semantic")]:
        assert resolve_method_name(alias) == name
    with pytest.raises(ValueError, match="`method`.*did you mean 'smoothgrad'"):
        resolve_method_name("smoothgrd")
    with pytest.raises(ValueError, match="`method`"):
        resolve_method_name(3)
    with pytest.raises(ValueError, match="`method`"):
        resolve_method_name(dict)  # a class without `attribute`


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(image=torch.rand(2, 6, 6, 6)), r"`image`.*2 channels"),
        (dict(image=torch.rand(1, 2, 6, 6, 6)), r"`image`.*one channel"),
        (dict(image=torch.rand(6, 6)), r"`image`.*3 spatial dims"),
        (dict(image=torch.full((1, 6, 6, 6), float("nan"))), r"`image`.*finite"),
        (dict(targets=[3]), r"`targets`.*\[0, 3\)"),
        (dict(targets=[-1]), r"`targets`"),
        (dict(targets=[1, 1]), r"`targets`.*distinct"),
        (dict(targets=["aorta"]), r"`targets`"),
        (dict(regions=torch.zeros(6, 6, 5, dtype=torch.long)), r"`regions`.*\(6, 6, 6\)"),
        (dict(regions=torch.rand(6, 6, 6)), r"`regions`.*integer"),
        (dict(method="vanila_gradient"), r"did you mean 'vanilla_gradient'"),
        (dict(method="sg", n_sample=3), r"'n_sample' \(did you mean 'n_samples'\?\)"),
        (dict(method="vg", n_samples=3), r"n_samples.*vanilla_gradient"),
        (dict(method="ks_cubes", n_samples=215), r"`n_samples`.*216"),  # 6 cubes per 6-voxel axis
        (dict(method="ks_semantic", n_samples=1), r"`n_samples`"),
        (dict(method="ig", integration="simpson"), r"`integration`"),
        (dict(method="ig", baseline="blured"), r"`baseline`.*did you mean 'blurred'"),
        (dict(method="sg", noise_level=-1.0), r"`noise_level`"),
        (dict(method="sg", batch_size=0), r"`batch_size`"),
        (dict(method="ks_semantic", spread="spread"), r"`spread`"),
        (dict(roi_size=(4, 4)), r"`roi_size`"),
        (dict(roi_size=(4, 4, 0)), r"`roi_size`"),
        (dict(roi_size=4, overlap=1.0), r"`overlap`"),
        (dict(roi_size=4, mode="gauss"), r"`mode`.*did you mean 'gaussian'"),
        (dict(roi_size=4, sw_batch_size=0), r"`sw_batch_size`"),
        (dict(sign="both"), r"`sign`"),
        (dict(num_regions=0), r"`num_regions`"),
        (dict(regions=torch.full((6, 6, 6), 5), num_regions=4), r"`regions`.*num_regions=4"),
    ],
)
def test_bad_arguments_name_the_argument(net, kwargs, match):
    args = dict(model=net, image=torch.rand(1, 6, 6, 6), method="vg") | kwargs
    with pytest.raises(ValueError, match=match):
        explain(**args)


def test_model_of_the_wrong_kind_or_output(net):
    with pytest.raises(ValueError, match="`model`"):
        explain(lambda x: x, torch.rand(1, 6, 6, 6), method="vg")

    class Squash(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3, 4))

    with pytest.raises(ValueError, match=r"`model`.*returned shape \(1, 1\)"):
        explain(Squash(), torch.rand(1, 6, 6, 6), method="vg")


def test_accepted_image_layouts_and_dtypes(net):
    a = explain(net, torch.rand(1, 1, 6, 6, 6), method="vg")
    b = explain(net, a.prediction[None].clone(), method="vg")  # integer intensities are cast to float
    assert a.attributions.shape == b.attributions.shape == (3, 6, 6, 6)
    two_d = explain(SmoothConvNet(classes=2, dims=2), torch.rand(1, 9, 7, dtype=torch.float64), method="ig", n_steps=3, spatial_dims=2)
    assert two_d.attributions.shape == (2, 9, 7) and two_d.roi.shape == (2, 2)


def test_keep_attributions_false_and_result_fields(net):
    res = explain(net, torch.rand(1, 6, 6, 6), method="sg", n_samples=2, targets=[2, 0], keep_attributions=False)
    assert res.attributions is None and res.attribution is None
    assert res.targets == [2, 0] and res.roi.shape == res.roi_mean.shape == (2, 3)
    assert res.method == "smoothgrad" and res.seconds > 0 and res.prediction.shape == (6, 6, 6)
    assert res.region_names == ["0", "1", "2"]


def test_a_captum_class_runs_on_the_proxy_per_target(net):
    from captum.attr import IntegratedGradients

    image = torch.rand(1, 6, 6, 6)
    ours = explain(net, image, method="ig", n_steps=5, targets=[0, 2])
    theirs = explain(net, image, method=IntegratedGradients, n_steps=5, targets=[0, 2], progress=True)
    assert theirs.method == "IntegratedGradients" and "captum_class" in theirs.diagnostics
    # same Gauss-Legendre rule; Captum's float32 step sizes limit the agreement
    torch.testing.assert_close(theirs.attributions, ours.attributions, rtol=1e-4, atol=1e-5 * float(ours.attributions.abs().max()))
    with_progress = explain(net, image, method="sg", n_samples=2, seed=0, progress=True)
    torch.testing.assert_close(with_progress.attributions, explain(net, image, method="sg", n_samples=2, seed=0).attributions)


def test_a_model_ignoring_its_input_gets_zero_attributions_and_nan_shares():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], 1).detach()

    res = explain(Constant(), torch.rand(1, 4, 4, 4), method="sg", n_samples=2)
    assert (res.attributions == 0).all() and torch.isnan(res.roi).all()

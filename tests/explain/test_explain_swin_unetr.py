"""The engine on the project's network: a tiny MONAI Swin-UNETR (32^3, group norm)."""
from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency

from agg2exp_lightning.explain import explain, proxy_output


@pytest.fixture(scope="module")
def swin():
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=17, feature_size=12, depths=(1, 1, 1, 1), norm_name=("group", {"num_groups": 3}))


def test_vanilla_gradient_of_swin_unetr_matches_captum_under_inference_mode(swin):
    image = torch.rand(1, 32, 32, 32)
    targets = [1, 8]
    with torch.inference_mode():
        res = explain(swin, image, method="vg", targets=targets)
    with torch.no_grad():
        labels = swin(image[None]).argmax(1)[0]
    assert torch.equal(res.prediction, labels)
    f = lambda x: proxy_output(swin(x), labels, list(range(17)))  # noqa: E731
    for t, c in enumerate(targets):
        ref = Saliency(f).attribute(image[None], target=c, abs=False)[0, 0]
        torch.testing.assert_close(res.attributions[t], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    rows = res.roi[~torch.isnan(res.roi).all(1)]
    assert torch.allclose(rows.nansum(1), torch.ones(len(rows), dtype=torch.float64))

"""Mixed precision: autocast around the model only; fp32 unchanged; bf16 close to fp32; model state restored."""
from __future__ import annotations

import pytest
import torch

from agg2exp_lightning.explain import explain
from agg2exp_lightning.explain.precision import AutocastModel, cpu_supports_bf16, resolve_precision, with_precision

from explain_models import SmoothConvNet  # noqa: I001 - beside this file


class DtypeProbe(torch.nn.Module):
    """A 1x1 conv net that records the dtype its convolution computes in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)
        self.seen: list[torch.dtype] = []

    def forward(self, x):
        out = self.conv(x)
        self.seen.append(out.dtype)
        return out


def test_fp32_is_the_model_itself_and_a_bad_precision_is_named():
    net = DtypeProbe()
    assert with_precision(net, "fp32", "cpu") == (net, "fp32")
    with pytest.raises(ValueError, match="precision"):
        explain(net, torch.rand(1, 6, 6, 6), method="vg", precision="fp8")


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bfloat16")
def test_bf16_on_cpu_runs_the_model_in_bf16_and_returns_fp32():
    net = DtypeProbe()
    image = torch.rand(1, 6, 6, 6)
    res = explain(net, image, method="vg", precision="bf16", pass_bytes_per_voxel=0)
    assert set(net.seen) == {torch.bfloat16} and res.diagnostics["precision"] == "bf16"
    assert res.attributions.dtype == torch.float32 and res.roi.dtype == torch.float64
    wrapped, _ = with_precision(net, "bf16", "cpu")
    assert isinstance(wrapped, AutocastModel) and with_precision(net, "bf16", "cpu")[0] is wrapped  # one wrapper per model


def test_bf16_falls_back_to_fp32_where_the_cpu_has_no_bf16(monkeypatch):
    import agg2exp_lightning.explain.precision as precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("bf16", "cpu") == "fp32"
    net = DtypeProbe()
    res = explain(net, torch.rand(1, 6, 6, 6), method="vg", precision="bf16", pass_bytes_per_voxel=0)
    assert set(net.seen) == {torch.float32} and res.diagnostics["precision"] == "fp32"


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bfloat16")
@pytest.mark.parametrize("method", ["vg", "ig", "ks_semantic"])
def test_bf16_attributions_stay_close_to_fp32_and_the_model_is_restored(method):
    """A smooth conv net in float32: bf16 (8 mantissa bits) RoI shares within 0.02 of fp32's."""
    torch.manual_seed(0)
    model = SmoothConvNet(classes=3, dtype=torch.float32).train()
    image = torch.rand(1, 12, 12, 12)
    opts = {"n_steps": 4} if method == "ig" else {"n_samples": 20, "seed": 0} if method == "ks_semantic" else {}
    full = explain(model, image, method=method, **opts)
    half = explain(model, image, method=method, precision="bf16", **opts)
    assert (half.prediction == full.prediction).float().mean() > 0.95
    both = torch.isfinite(full.roi) & torch.isfinite(half.roi)
    assert (half.roi[both] - full.roi[both]).abs().max() < 0.02
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, AutocastModel) for m in model.modules())

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


def test_auto_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, caplog):
    """precision="auto" (the default) follows the hardware; an explicit bf16 on a CPU without it is obeyed, with a warning."""
    import logging

    import agg2exp_lightning.utils.hardware as hardware

    monkeypatch.delenv(hardware.AUTO_PRECISION_ENV, raising=False)
    for native, expected in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(hardware, "_cpu_bf16", lambda native=native: native)
        net = DtypeProbe()
        res = explain(net, torch.rand(1, 6, 6, 6), method="vg", pass_bytes_per_voxel=0)  # default: auto
        assert set(net.seen) == {expected}
        assert res.diagnostics["precision"] == ("bf16" if native else "fp32")
        assert ("native bfloat16" in res.diagnostics["precision_reason"]) and (("no native" in res.diagnostics["precision_reason"]) != native)
    monkeypatch.setattr(hardware, "_cpu_bf16", lambda: False)
    net = DtypeProbe()
    with caplog.at_level(logging.WARNING, logger="agg2exp_lightning.utils.hardware"):
        res = explain(net, torch.rand(1, 6, 6, 6), method="vg", precision="bf16", pass_bytes_per_voxel=0)
    assert set(net.seen) == {torch.bfloat16} and res.diagnostics["precision"] == "bf16"
    assert any("emulated" in r.getMessage() and "slow" in r.getMessage() for r in caplog.records)


def test_auto_can_be_pinned_by_the_environment(monkeypatch):
    import agg2exp_lightning.utils.hardware as hardware

    monkeypatch.setattr(hardware, "_cpu_bf16", lambda: True)
    monkeypatch.setenv(hardware.AUTO_PRECISION_ENV, "fp32")
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv(hardware.AUTO_PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match="AGG2EXP_AUTO_PRECISION"):
        resolve_precision("auto", "cpu")


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

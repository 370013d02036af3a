"""GPU vs CPU: the same explanation on both devices (skipped without CUDA; run by benchmarks/gpu_check.sh)."""
from __future__ import annotations

import pytest
import torch

from agg2exp_lightning.explain import explain

from explain_models import SmoothConvNet  # noqa: I001 - beside this file

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = [
    ("vg", {}),
    ("sg", {"n_samples": 3, "seed": 0}),
    ("ig", {"n_steps": 4}),
    ("ks_cubes", {"n_samples": 30, "cubes_per_axis": 2, "seed": 0}),
    ("ks_semantic", {"n_samples": 20, "seed": 0}),
]


@pytest.mark.parametrize(("method", "opts"), CASES)
@pytest.mark.parametrize("roi_size", [None, (8, 8, 8)])
def test_cuda_equals_cpu_in_float64(method, opts, roi_size):
    """float64 on both devices: maps and RoI shares agree to rounding (SmoothGrad's noise is drawn on the CPU)."""
    model = SmoothConvNet(classes=3)
    image = torch.rand(1, 12, 10, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    window = {} if roi_size is None else {"roi_size": roi_size, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2}
    cpu = explain(model, image, method=method, **window, **opts)
    gpu = explain(model.cuda(), image.cuda(), method=method, **window, **opts)
    assert torch.equal(gpu.prediction.cpu(), cpu.prediction)
    torch.testing.assert_close(gpu.attributions.cpu(), cpu.attributions, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gpu.roi.cpu(), cpu.roi, rtol=1e-7, atol=1e-9, equal_nan=True)
    assert gpu.diagnostics["forward_samples"] == cpu.diagnostics["forward_samples"]


def test_swin_unetr_cuda_matches_cpu_in_float32():
    """A small Swin-UNETR in float32 (TF32 off): RoI shares of VG within 5e-3 between devices."""
    from monai.networks.nets import SwinUNETR

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = SwinUNETR(in_channels=1, out_channels=4, feature_size=12, depths=(1, 1, 1, 1)).eval()
    image = torch.rand(1, 40, 40, 40, generator=torch.Generator().manual_seed(0))
    cpu = explain(model, image, method="vg", roi_size=(32, 32, 32))
    gpu = explain(model.cuda(), image.cuda(), method="vg", roi_size=(32, 32, 32))
    agree = (gpu.prediction.cpu() == cpu.prediction).float().mean()
    assert agree > 0.999
    torch.testing.assert_close(gpu.roi.cpu(), cpu.roi, rtol=0, atol=5e-3, equal_nan=True)

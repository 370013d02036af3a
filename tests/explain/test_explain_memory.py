"""A volume too large for memory is refused with an estimate before any model pass, never killed."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from agg2exp_lightning.explain import explain
from agg2exp_lightning.explain.memory import (
    ExplanationTooLarge,
    available_memory,
    explain_memory_estimate,
)


class CountingNet(torch.nn.Module):
    """A 1x1x1 convolution that counts its forward passes."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, classes, 1)
        self.calls = 0
        self.shapes = []

    def forward(self, x):
        self.calls += 1
        self.shapes.append(tuple(x.shape))
        if x.numel() > 10**7:  # a regression must fail here, not exhaust the test machine's memory
            raise AssertionError(f"a pass over {tuple(x.shape)} was attempted")
        return self.conv(x)


def test_parts_of_the_estimate_by_hand():
    # 10^3 voxels, 3 classes, 2 targets, SmoothGrad 4 samples a pass, float64, one pass
    est = explain_memory_estimate((10, 10, 10), "smoothgrad", num_classes=3, num_targets=2, batch_size=4,
                                  pass_bytes_per_voxel=100.0, dtype_bytes=8)
    v = 1000
    expected = {
        "model pass": 100.0 * 4 * v,
        "image": 2 * 8 * v,
        "logits": 8 * 3 * v,
        "labels": 16 * v,
        "attributions": 8 * 2 * v,
        "aggregation": 8 * 2 * v,
        "input samples": 8 * 4 * v,
        "gradients": 8 * 4 * 2 * v + 8 * 4 * v,
        "accumulator": 8 * 2 * v,
    }
    assert est.parts == pytest.approx(expected)
    assert est.total == pytest.approx(sum(expected.values()))
    # windows: the pass holds sw_batch_size windows only; whole-volume buffers are padded to the window
    win = explain_memory_estimate((10, 10, 6), "kernelshap_cubes", num_classes=3, num_targets=2, roi_size=(8, 8, 8),
                                  sw_batch_size=2, batch_size=4, pass_bytes_per_voxel=100.0, dtype_bytes=4)
    assert win.parts["model pass"] == pytest.approx(0.5 * 100.0 * 2 * 512)  # forward only
    assert win.parts["batch logits"] == pytest.approx(4 * 4 * 3 * (10 * 10 * 8))
    assert "accumulator" not in win.parts
    # the vanilla gradient puts one sample through the model whatever batch_size says
    vg = explain_memory_estimate((10, 10, 10), "vanilla_gradient", num_classes=3, num_targets=2, batch_size=8,
                                 pass_bytes_per_voxel=100.0)
    assert vg.parts["model pass"] == pytest.approx(100.0 * v)


def test_estimate_grows_with_volume_targets_and_samples():
    def total(**kw):
        args = dict(num_classes=17, num_targets=17, roi_size=(96, 96, 96), batch_size=4) | kw
        return explain_memory_estimate(args.pop("spatial", (200, 200, 200)), args.pop("method", "smoothgrad"), **args).total

    assert total(spatial=(300, 300, 300)) > total()
    assert total(num_targets=7) < total()
    assert total(batch_size=1) < total()
    assert total(roi_size=None) > 10 * total()  # activations of a pass over 8e6 voxels vs of one 96^3 window


def test_available_memory_is_positive_and_at_most_the_machine():
    avail = available_memory("cpu")
    assert avail > 0
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    assert avail <= total_kib * 1024


def test_a_512_cubed_volume_in_one_pass_is_refused_before_any_pass():
    net = CountingNet(17)
    image = torch.zeros(1, 1, 1, 1).expand(1, 512, 512, 512)  # no 512^3 buffer behind it
    with pytest.raises(ExplanationTooLarge, match=r"512x512x512 voxels with vanilla_gradient \(one pass") as err:
        explain(net, image, method="vg")
    message = str(err.value)
    assert "needs about" in message and "TiB" not in message and "GiB" in message and "model pass" in message
    assert "pass `roi_size`" in message and "is available" in message
    # one pass only: the memory probe, on a small cut of the volume (halved until it is safe)
    assert net.calls == 1 and net.shapes[0][2] <= 96 and isinstance(err.value, MemoryError)


def test_windows_that_do_not_fit_get_other_advice_and_a_fitting_budget_runs():
    net = CountingNet(3)
    image = torch.rand(1, 16, 16, 16)
    with pytest.raises(ExplanationTooLarge, match="windows of 8x8x8") as err:
        explain(net, image, method="sg", roi_size=8, max_memory=1e5, n_samples=2)
    assert "lower `sw_batch_size`" in str(err.value) and net.shapes == [(1, 1, 8, 8, 8)]  # the probe of one window
    need = explain_memory_estimate((16, 16, 16), "smoothgrad", num_classes=3, num_targets=3, roi_size=(8, 8, 8)).total
    res = explain(net, image, method="sg", roi_size=8, max_memory=need * 1.01, n_samples=2, seed=0)
    assert res.roi.shape == (3, 3) and net.calls > 0
    free = explain(copy.deepcopy(net), image, method="sg", roi_size=8, max_memory=math.inf, n_samples=2, seed=0)
    torch.testing.assert_close(res.roi, free.roi, equal_nan=True)  # the check changes nothing it lets through


def test_the_second_check_refuses_once_the_classes_are_known():
    # targets unknown before the prediction: the first check is a lower bound (1 class), the second sees 40
    net = CountingNet(40)
    image = torch.rand(1, 12, 12, 12)
    lower = explain_memory_estimate((12,) * 3, "vanilla_gradient", num_classes=1, num_targets=1, pass_bytes_per_voxel=0).total
    full = explain_memory_estimate((12,) * 3, "vanilla_gradient", num_classes=40, num_targets=40, pass_bytes_per_voxel=0).total
    with pytest.raises(ExplanationTooLarge):
        explain(net, image, method="vg", pass_bytes_per_voxel=0, max_memory=(lower + full) / 2)
    assert net.calls == 1  # the prediction pass only; no attribution was started


def test_bad_memory_budget_is_named():
    with pytest.raises(ValueError, match="`max_memory`"):
        explain(CountingNet(), torch.rand(1, 4, 4, 4), method="vg", max_memory=0)


def test_probe_counts_the_tensors_saved_for_the_backward_by_hand():
    """conv 1x1 1->8, ReLU, conv 1x1 8->2 in float32, per voxel: the input (4 B, saved by the first conv)
    and the ReLU output (32 B, saved by ReLU and the second conv: one storage), the logits and their
    cotangent (2 x 8 B) and the input gradient (4 B): 56 B, times the CPU factor for temporaries."""
    from agg2exp_lightning.explain.memory import CPU_TRANSIENT_FACTOR, measure_pass_bytes_per_voxel

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)).train()
    wide = torch.nn.Sequential(torch.nn.Conv3d(1, 16, 1), torch.nn.ReLU(), torch.nn.Conv3d(16, 2, 1))
    with torch.backends.mkldnn.flags(enabled=False):  # PyTorch's own kernel: no depth split (utils.cpu_conv) saving slabs
        assert measure_pass_bytes_per_voxel(net, (6, 5, 4)) == CPU_TRANSIENT_FACTOR * (4 + 32 + 16 + 4)
        assert measure_pass_bytes_per_voxel(wide, (6, 5, 4)) == CPU_TRANSIENT_FACTOR * (4 + 64 + 16 + 4)
    assert net.training and all(p.requires_grad for p in net.parameters())  # restored


def test_probe_is_cached_per_model_and_falls_back_when_the_model_cannot_run_it():
    from agg2exp_lightning.explain.memory import PASS_BYTES_PER_VOXEL, PROBE_EDGE, probe_pass_bytes_per_voxel

    net = CountingNet(3)
    first = probe_pass_bytes_per_voxel(net, (200, 10, 10))  # probe cut to 96 x 10 x 10
    assert net.shapes == [(1, 1, PROBE_EDGE, 10, 10)] and 0 < first < PASS_BYTES_PER_VOXEL
    assert probe_pass_bytes_per_voxel(net, (300, 10, 10)) == first and net.calls == 1  # same probe shape: cached
    probe_pass_bytes_per_voxel(net, (40, 40, 40), roi_size=(8, 8, 8))  # a window: probed at the window size
    assert net.calls == 2
    # a probe that could itself exhaust the memory is cut further: 2 x 8 KiB x probe voxels <= half the budget
    small = CountingNet(3)
    probe_pass_bytes_per_voxel(small, (200, 200, 200), max_memory=4 * 8192 * 24**3)
    assert small.shapes == [(1, 1, 24, 24, 24)]

    class NeedsBigInput(torch.nn.Module):
        def forward(self, x):
            raise ValueError("input too small")

    assert probe_pass_bytes_per_voxel(NeedsBigInput(), (8, 8, 8)) == PASS_BYTES_PER_VOXEL

"""The depth-split convolution equals PyTorch's, and the mode routes exactly the calls PyTorch runs natively."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from agg2exp_lightning.utils.cpu_conv import depth_split_conv3d, onednn_conv3d, takes_native_conv3d

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


# kernel depth, depth, stride, padding, dilation: even and odd output depths, halos of 0-4 planes
CASES = [
    (3, 8, 1, 1, 1),
    (3, 9, 1, 1, 1),
    (1, 6, 1, 0, 1),
    (2, 8, 2, 0, 1),
    (3, 11, 2, 1, 1),
    (5, 10, (1, 2, 1), (2, 0, 1), 1),
    (3, 12, 1, 2, 2),
    (3, 7, (3, 1, 1), 1, (1, 2, 1)),
    (2, 3, 1, 0, 1),  # output depth 2: one plane each
]


@pytest.mark.parametrize("kd,depth,stride,padding,dilation", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_depth_split_equals_conv3d_in_values_and_gradients(kd, depth, stride, padding, dilation, with_bias):
    g = torch.Generator().manual_seed(kd * 100 + depth)
    x = torch.randn(1, 3, depth, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, kd, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    ref = F.conv3d(x, w, b, stride, padding, dilation)
    out = depth_split_conv3d(x, w, b, stride, padding, dilation)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    seed = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    params = [t for t in (x, w, b) if t is not None]
    ref_grads = torch.autograd.grad((ref * seed).sum(), params)
    grads = torch.autograd.grad((out * seed).sum(), params)
    for a, e in zip(grads, ref_grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_depth_split_refuses_what_it_cannot_split():
    with pytest.raises(ValueError, match=r"expected an input \[1, C, D, H, W\], got \(2, 1, 4, 4, 4\)"):
        depth_split_conv3d(torch.rand(2, 1, 4, 4, 4), torch.rand(1, 1, 3, 3, 3))
    with pytest.raises(ValueError, match="output depth 1 cannot be split"):
        depth_split_conv3d(torch.rand(1, 1, 3, 4, 4), torch.rand(1, 1, 3, 3, 3))


def test_takes_native_conv3d_follows_pytorchs_rule():
    w3 = torch.rand(12, 12, 3, 3, 3)
    assert takes_native_conv3d(torch.rand(1, 12, 32, 32, 32), w3) == torch.backends.mkldnn.is_available()
    assert not takes_native_conv3d(torch.rand(1, 12, 64, 64, 64), w3)  # 12 * 64 * 64 > 20480: oneDNN already
    assert not takes_native_conv3d(torch.rand(2, 12, 8, 8, 8), w3)  # batch of two
    assert not takes_native_conv3d(torch.rand(1, 12, 8, 8, 8).double(), w3.double())  # oneDNN is fp32 here
    assert not takes_native_conv3d(torch.rand(1, 12, 8, 8, 8), torch.rand(12, 12, 3, 5, 5))  # wide kernel
    assert not takes_native_conv3d(torch.rand(1, 12, 8, 8, 8), torch.rand(12, 6, 3, 3, 3), groups=2)


@needs_onednn
def test_mode_moves_the_native_convolution_to_onednn_with_the_same_result():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(12, 12, 3, padding=1)
    x = torch.randn(1, 12, 16, 16, 16, requires_grad=True)
    outside = _ops(lambda: conv(x))
    assert "aten::slow_conv3d_forward" in outside and "aten::mkldnn_convolution" not in outside
    with onednn_conv3d():
        inside = _ops(lambda: conv(x))
        y = conv(x)
    assert "aten::mkldnn_convolution" in inside and "aten::slow_conv3d_forward" not in inside
    with onednn_conv3d():  # called with F.conv3d's keyword names
        by_name = _ops(lambda: F.conv3d(input=x, weight=conv.weight, bias=conv.bias, padding=1))
    assert "aten::mkldnn_convolution" in by_name and "aten::slow_conv3d_forward" not in by_name
    ref = conv(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    (g_in, g_w) = torch.autograd.grad((y * gy).sum(), (x, conv.weight))
    (r_in, r_w) = torch.autograd.grad((ref * gy).sum(), (x, conv.weight))
    torch.testing.assert_close(g_in, r_in, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g_w, r_w, rtol=1e-4, atol=1e-3)


@needs_onednn
@pytest.mark.parametrize(
    "make",
    [
        lambda: (torch.nn.Conv3d(2, 2, 3, padding="same"), torch.rand(1, 2, 8, 8, 8)),  # string padding
        lambda: (torch.nn.Conv3d(2, 2, 3, padding=1), torch.rand(2, 2, 8, 8, 8)),  # batch of two
        lambda: (torch.nn.Conv3d(2, 2, 3).double(), torch.rand(1, 2, 8, 8, 8).double()),  # float64
        lambda: (torch.nn.Conv3d(2, 2, 3), torch.rand(1, 2, 3, 8, 8)),  # output depth 1
    ],
)
def test_mode_leaves_every_other_call_alone(make, monkeypatch):
    import agg2exp_lightning.utils.cpu_conv as cpu_conv

    def fail(*args, **kwargs):
        raise AssertionError("routed a call PyTorch does not run natively")

    monkeypatch.setattr(cpu_conv, "depth_split_conv3d", fail)
    conv, x = make()
    with onednn_conv3d():
        y = conv(x)
    assert torch.equal(y, conv(x))


@needs_onednn
def test_mode_steps_aside_under_autocast_and_for_replicate_padding(monkeypatch):
    import agg2exp_lightning.utils.cpu_conv as cpu_conv

    calls = []
    real = cpu_conv.depth_split_conv3d
    monkeypatch.setattr(cpu_conv, "depth_split_conv3d", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = torch.nn.Conv3d(2, 2, 3, padding=1)
    x = torch.rand(1, 2, 8, 8, 8)
    with onednn_conv3d(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    assert calls == []
    rep = torch.nn.Conv3d(2, 2, 3, padding=1, padding_mode="replicate")  # pads itself, then convolves without padding
    with onednn_conv3d():
        y = rep(x)
    assert calls == [1]
    torch.testing.assert_close(y, rep(x), rtol=1e-5, atol=1e-6)


def test_mode_is_gone_after_the_block_also_after_an_error():
    depth = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="boom"):
        with onednn_conv3d():
            assert torch._C._len_torch_function_stack() == depth + 1
            raise RuntimeError("boom")
    assert torch._C._len_torch_function_stack() == depth
    with onednn_conv3d(enabled=False):
        assert torch._C._len_torch_function_stack() == depth


@needs_onednn
def test_swin_unetr_inside_the_mode_is_as_accurate_as_pytorchs_fp32():
    """Logits and input gradient against a float64 run of the same net: the mode's error is no larger than
    that of PyTorch's own fp32 (the gradient is ill-conditioned at the 2^3 levels, so both differ visibly
    from float64 and from each other at a few voxels; the norm compares them)."""
    from agg2exp_lightning.model import build_swin_unetr

    torch.manual_seed(0)
    net = build_swin_unetr(1, 5, feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 6, 12, 24)).eval()
    x = torch.randn(1, 1, 64, 64, 64)  # 32^3 and below inside: PyTorch's native kernel

    def run(model, inp, routed):
        inp = inp.clone().requires_grad_(True)
        with onednn_conv3d(routed):
            out = model(inp)
        return out.detach().double(), torch.autograd.grad(out[:, 1].sum(), inp)[0].double()

    ref_out, ref_grad = run(net.double(), x.double(), False)
    net.float()
    (nat_out, nat_grad), (out, grad) = run(net, x, False), run(net, x, True)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel(out, ref_out) <= 2 * rel(nat_out, ref_out) + 1e-7
    assert rel(grad, ref_grad) <= 2 * rel(nat_grad, ref_grad) + 1e-7
    assert rel(grad, ref_grad) < 1e-2


def test_cases_cover_odd_and_even_output_depths():
    """The split's two branches (equal slabs, a padded second slab) are both among CASES."""
    parities = set()
    for kd, depth, stride, padding, dilation in CASES:
        sd, pd, dd = (v if isinstance(v, int) else v[0] for v in (stride, padding, dilation))
        parities.add(((depth + 2 * pd - dd * (kd - 1) - 1) // sd + 1) % 2)
    assert parities == {0, 1}

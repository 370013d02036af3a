"""Batch-one 3D convolutions on a CPU through oneDNN instead of PyTorch's slow native kernel.

PyTorch sends an fp32 CPU convolution to oneDNN only when one of these holds (ATen's
``ConvParams::use_mkldnn``): groups > 1, a kernel wider than 3 in its last two dimensions, a batch of more
than one, or ``N * C * D * H > 20480``. Everything else runs ``slow_conv3d``, whose backward works one
batch item at a time. A 3D U-Net trained or explained with batch 1 sends all its deeper levels there
(12 channels at 32^3, 24 at 16^3, ...), whatever the CPU. Measured on one 3x3x3 convolution forward and
backward, 2 threads (``benchmarks/bench_cpu_conv.py``, ``docs/benchmarks.md``): 12 channels at 32^3 runs
5.7x faster through oneDNN on an AMD EPYC capped at AVX2 and 6.5x with its AVX-512.

:func:`depth_split_conv3d` computes the same convolution as the two halves of the output depth, each
with the input slab (halo included) it needs, stacked as a batch of two: PyTorch then takes oneDNN for
the forward and for the backward. The result equals :func:`torch.nn.functional.conv3d` up to fp32
summation order. :func:`onednn_conv3d` applies it to every ``conv3d`` call inside a ``with`` block, and
only where PyTorch would otherwise take the native kernel: fp32 CPU tensors, batch 1, groups 1, not
under autocast (bf16 and fp16 convolutions go to oneDNN already), ``N * C * D * H`` at most 20480, an
output depth of at least 2 and a numeric padding.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["depth_split_conv3d", "onednn_conv3d", "takes_native_conv3d"]

#: PyTorch's size limit below which a batch-one fp32 CPU convolution takes the native kernel.
NATIVE_CONV_MAX_NCDH = 20480


def _triple(value: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in ensure_tuple_rep(value, 3))


def _output_depth(depth: int, weight: Tensor, stride, padding, dilation) -> int:  # noqa: ANN001
    """Output planes along depth of a convolution of an input ``depth`` planes deep."""
    (sd, _, _), (pd, _, _), (dd, _, _) = _triple(stride), _triple(padding), _triple(dilation)
    return (depth + 2 * pd - dd * (weight.shape[2] - 1) - 1) // sd + 1


def takes_native_conv3d(x: Tensor, weight: Tensor, groups: int = 1) -> bool:
    """Whether PyTorch would run this fp32 CPU ``conv3d`` with its native kernel rather than oneDNN.

    Mirrors ATen's rule (see the module's docstring) for the cases :func:`depth_split_conv3d` handles.
    """
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 5
        and x.shape[0] == 1
        and groups == 1
        and not (weight.shape[-1] > 3 and weight.shape[-2] > 3)
        and x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] <= NATIVE_CONV_MAX_NCDH
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not x.is_mkldnn
    )


def depth_split_conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv3d`` of a batch-one input computed as two depth halves stacked in the batch.

    Args:
        x: ``[1, C, D, H, W]``.
        weight, bias, stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv3d`
            (``padding`` as numbers).

    Returns:
        ``[1, C_out, D', H', W']``, the same as ``F.conv3d`` (the output depth ``D'`` must be at least 2).

    Raises:
        ValueError: ``x`` is not a batch of one, or the output depth is below 2.
    """
    if x.dim() != 5 or x.shape[0] != 1:
        raise ValueError(f"depth_split_conv3d: expected an input [1, C, D, H, W], got {tuple(x.shape)}")
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = _triple(stride), _triple(padding), _triple(dilation)
    extent = dd * (weight.shape[2] - 1) + 1  # input depth one output plane reads
    out_depth = _output_depth(x.shape[2], weight, stride, padding, dilation)
    if out_depth < 2:
        raise ValueError(f"depth_split_conv3d: output depth {out_depth} cannot be split in two")
    if pd:
        x = F.pad(x, (0, 0, 0, 0, pd, pd))
    half = (out_depth + 1) // 2
    # output planes [0, half) read input [0, (half - 1) * sd + extent); [half, out_depth) read from half * sd on.
    first = x[:, :, : (half - 1) * sd + extent]
    second = x[:, :, half * sd : (out_depth - 1) * sd + extent]
    if second.shape[2] != first.shape[2]:  # odd output depth: pad the second slab, drop its extra plane
        second = F.pad(second, (0, 0, 0, 0, 0, first.shape[2] - second.shape[2]))
    y = F.conv3d(torch.cat([first, second]), weight, bias, (sd, sh, sw), (0, ph, pw), (dd, dh, dw), groups)
    return torch.cat([y[:1], y[1:, :, : out_depth - half]], dim=2)


class _OneDNNConv3d(TorchFunctionMode):
    """Routes the ``conv3d`` calls PyTorch would run natively through :func:`depth_split_conv3d`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.conv3d or func is torch.conv3d:
            routed = self._route(*args, **kwargs)
            if routed is not None:
                return routed
        return func(*args, **kwargs)

    @staticmethod
    def _route(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002, ANN001
        x = input  # F.conv3d's own parameter names, so that keyword calls route too
        if isinstance(padding, str) or not takes_native_conv3d(x, weight, groups):
            return None
        if torch.is_autocast_enabled("cpu"):
            return None
        if _output_depth(x.shape[2], weight, stride, padding, dilation) < 2:
            return None
        return depth_split_conv3d(x, weight, bias, stride, padding, dilation, groups)


@contextlib.contextmanager
def onednn_conv3d(enabled: bool = True) -> Iterator[None]:
    """Inside the block, batch-one fp32 CPU ``conv3d`` calls that PyTorch would run with its native kernel
    run through oneDNN (:func:`depth_split_conv3d`); every other call is unchanged.

    Args:
        enabled: ``False`` makes the block do nothing (for callers that switch it by a setting).

    Example:
        >>> net = torch.nn.Conv3d(4, 4, 3, padding=1)
        >>> x = torch.rand(1, 4, 8, 8, 8)
        >>> with onednn_conv3d():
        ...     y = net(x)
        >>> bool(torch.allclose(y, net(x), atol=1e-5))
        True
    """
    if not enabled:
        yield
        return
    with _OneDNNConv3d():
        yield

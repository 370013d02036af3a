"""Mixed precision for explanations: the model's passes under ``torch.autocast``, everything else in fp32.

Only the network runs in reduced precision; its logits come back in the input's dtype, so the proxy,
the blending of windows, the gradient accumulators, the Shapley regression and the aggregation stay
in full precision. Gradients flow through autocast to the full-precision input.

On CUDA, ``"bf16"`` and ``"fp16"`` use the tensor cores. On CPU, autocast helps only where the
processor has bfloat16 instructions (AVX-512 BF16 / AMX, reported by oneDNN); elsewhere ``"bf16"``
falls back to fp32 with a log message. ``"fp16"`` on CPU runs as asked (it was slower than fp32 on
the CPU measured in docs/benchmarks.md).
"""
from __future__ import annotations

import logging
import weakref
from typing import Literal

import torch
from torch import Tensor, nn

from agg2exp_lightning.utils import look_up_option

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one wrapper per model and precision


class AutocastModel(nn.Module):
    """``model`` with its forward pass under ``torch.autocast(device_type, dtype)``, logits cast back to the input's dtype.

    Args:
        model: the network (registered as a submodule: eval mode and frozen parameters reach it).
        dtype: ``torch.bfloat16`` or ``torch.float16``.
        device_type: ``"cuda"`` or ``"cpu"``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.device_type = device_type

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = self.model(x)
        return out.to(x.dtype)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN reports native bfloat16 support (AVX-512 BF16 or AMX) on this CPU."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision an explanation on ``device`` runs at: ``precision``, or ``"fp32"`` where it cannot help.

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS` (with the nearest spelling).
    """
    precision = look_up_option("precision", precision, PRECISIONS)
    device = torch.device(device)
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        log.info("precision='bf16': this CPU has no native bfloat16 instructions, so it would be slower; running in fp32")
        return "fp32"
    if precision != "fp32" and device.type not in ("cuda", "cpu"):
        log.info("precision=%r: autocast is not used on %s; running in fp32", precision, device.type)
        return "fp32"
    return precision


def with_precision(model: nn.Module, precision: str, device: torch.device | str) -> tuple[nn.Module, str]:
    """``(model to run, precision used)``: ``model`` itself for fp32, else wrapped in :class:`AutocastModel`.

    Example:
        >>> net = torch.nn.Conv3d(1, 2, 1)
        >>> wrapped, used = with_precision(net, "fp32", "cpu")
        >>> wrapped is net, used
        (True, 'fp32')
    """
    used = resolve_precision(precision, device)
    if used == "fp32":
        return model, used
    key = (used, torch.device(device).type)
    wrappers = _WRAPPED.setdefault(model, {})
    if key not in wrappers:  # the same wrapper each time, so per-model caches (the memory probe) see one model
        wrappers[key] = AutocastModel(model, _DTYPES[used], key[1])
    return wrappers[key], used

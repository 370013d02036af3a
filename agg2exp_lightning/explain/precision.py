"""Mixed precision for explanations: the model's passes under ``torch.autocast``, everything else in fp32.

Only the network runs in reduced precision; its logits come back in the input's dtype, so the proxy,
the blending of windows, the gradient accumulators, the Shapley regression and the aggregation stay
in full precision. Gradients flow through autocast to the full-precision input.

``"auto"`` (the default) is bf16 where the device runs it natively (a CUDA device that supports it; a CPU
with AVX512_BF16 or AMX, as oneDNN reports it) and fp32 elsewhere
(:func:`agg2exp_lightning.utils.hardware.choose_precision`, which says why). An explicit precision is
obeyed: ``"bf16"`` on a CPU without native bfloat16 runs emulated, with a warning that it will be slow.
"""
from __future__ import annotations

import logging
import weakref
from typing import Literal

import torch
from torch import Tensor, nn

from agg2exp_lightning.utils import look_up_option
from agg2exp_lightning.utils.hardware import PrecisionChoice, choose_precision, native_bf16

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
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
    """Whether this CPU runs bfloat16 natively (oneDNN reports AVX512_BF16 or AMX)."""
    return native_bf16("cpu")[0]


def precision_choice(precision: str, device: torch.device | str) -> PrecisionChoice:
    """What ``precision`` means for an explanation on ``device``: what runs, and why.

    ``"auto"`` is bf16 where native, fp32 elsewhere; an explicit precision is obeyed (an emulated bf16
    with a warning). Autocast is used only on CUDA and CPU: elsewhere every precision runs as fp32.

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS` (with the nearest spelling).
    """
    precision = look_up_option("precision", precision, PRECISIONS)
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        if precision not in ("auto", "fp32"):
            log.info("precision=%r: autocast is not used on %s; running in fp32", precision, device.type)
        return PrecisionChoice(precision, "fp32", f"autocast is not used on {device.type}")
    return choose_precision(precision, device)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision an explanation on ``device`` runs at (:func:`precision_choice`'s ``used``)."""
    return precision_choice(precision, device).used


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

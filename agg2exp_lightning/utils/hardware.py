"""What this machine can do fast, said once: the CPU and its vector units, native bfloat16, the GPU.

Speed-ups that depend on the hardware are chosen here, by capability, never from a figure measured on
one machine: bfloat16 autocast is 1.1-1.5x faster where the processor has bfloat16 instructions and about
20-40x slower per 3D convolution where PyTorch must emulate them (docs/benchmarks.md, measured on both).

- :func:`native_bf16`: whether bfloat16 runs natively on a device, and why (CUDA: the device reports it;
  CPU: oneDNN reports AVX512_BF16 or AMX, which also honours a ``ONEDNN_MAX_CPU_ISA`` cap).
- :func:`choose_precision`: the precision ``"auto"`` stands for on a device, with the reason, and a
  warning for an explicit bfloat16 that will be emulated (obeyed all the same).
- :func:`hardware_summary` / :func:`hardware_line`: the facts every benchmark results file records.

``AGG2EXP_AUTO_PRECISION=fp32`` (or ``bf16``) pins what ``"auto"`` resolves to, whatever the hardware: the
test suite pins fp32 so that its results and durations do not depend on the CPU it meets.
"""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "AUTO_PRECISION_ENV",
    "PrecisionChoice",
    "choose_precision",
    "cpu_flags",
    "cpu_model",
    "device_type",
    "hardware_line",
    "hardware_summary",
    "native_bf16",
]

#: Environment variable that pins what ``precision="auto"`` resolves to (``fp32`` or ``bf16``).
AUTO_PRECISION_ENV = "AGG2EXP_AUTO_PRECISION"

#: Lightning's precision values (``Trainer(precision=...)``), by what they compute in.
_BF16 = ("bf16", "bf16-mixed", "bf16-true")
_FP16 = ("16", "16-mixed", "16-true")
_FP32 = ("32", "32-true")
_FP64 = ("64", "64-true")


@dataclass(frozen=True)
class PrecisionChoice:
    """What was asked, what runs, and why (recorded in a run's and an audit's settings)."""

    asked: str
    used: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    """The processor's feature flags as the kernel reports them (empty where there is no ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _cpu_bf16() -> bool:
    """Whether oneDNN (which runs PyTorch's CPU convolutions) has native bfloat16 kernels here."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def device_type(device: Any) -> str:
    """``"cpu"``, ``"cuda"``, ``"mps"``...: from a ``torch.device``, a string, or a Lightning accelerator name.

    ``"auto"`` and ``"gpu"`` become the device Lightning would pick (CUDA where available).
    """
    import torch

    name = getattr(device, "type", None) or str(device if device is not None else "auto").lower()
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if name == "auto" and mps is not None and mps.is_available() else ("cpu" if name == "auto" else "cuda")
    return name.split(":")[0]


def native_bf16(device: Any = "cpu") -> tuple[bool, str]:
    """``(native, why)``: whether bfloat16 arithmetic runs natively on ``device``.

    Example:
        >>> native, why = native_bf16("cpu")
        >>> isinstance(native, bool) and isinstance(why, str)
        True
    """
    import torch

    kind = device_type(device)
    if kind == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device is available"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return True, f"CUDA device {name} supports bfloat16"
        return False, f"CUDA device {name} has no bfloat16 support"
    if kind == "cpu":
        if _cpu_bf16():
            return True, f"CPU {cpu_model()} has native bfloat16 (oneDNN reports AVX512_BF16 or AMX)"
        flags = cpu_flags()
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA")
        if capped and ({"avx512_bf16", "amx_bf16"} & flags):
            return False, f"no native bfloat16: oneDNN is capped at {capped} (ONEDNN_MAX_CPU_ISA), so bfloat16 would be emulated, and slow"
        return False, f"CPU {cpu_model()} has no native bfloat16 (no AVX512_BF16 or AMX): bfloat16 would be emulated, and slow"
    return False, f"bfloat16 autocast is not used on {kind}"


def choose_memory_format(precision: Any, device: Any) -> tuple[bool, str]:
    """``(channels_last, why)``: whether a 3D convolutional network trains in ``torch.channels_last_3d`` on ``device``.

    A speed-up that depends on the hardware, taken only where it was measured to help
    (``benchmarks/bench_train_step.py``, ``docs/benchmarks.md``): with bfloat16 autocast on a CPU with native
    bfloat16 a demo training step ran 1.41x faster on an AMD EPYC with AVX512_BF16 and no slower on an Intel CPU
    with AMX; in fp32 it gained nothing (1.03x on that AMD EPYC, 0.94x with oneDNN capped at AVX2); on a GPU it was
    not measured.

    Example:
        >>> choose_memory_format("32-true", "cpu")[0]
        False
    """
    kind = device_type(device)
    if kind != "cpu":
        return False, f"channels_last_3d not used on {kind} (not measured there)"
    if not str(precision).startswith("bf16"):
        return False, f"channels_last_3d not used at precision {precision} (no gain in fp32 on the CPUs measured)"
    native, why = native_bf16("cpu")
    if not native:
        return False, f"channels_last_3d not used: {why}"
    return True, "channels_last_3d: bf16 on a CPU with native bfloat16 (1.41x a training step on an AMD EPYC, docs/benchmarks.md)"


def choose_precision(asked: str | int | None, device: Any, *, style: str = "explain") -> PrecisionChoice:
    """The precision ``asked`` stands for on ``device``, with the reason.

    Args:
        asked: ``"auto"`` (bfloat16 where it is native, fp32 elsewhere) or an explicit precision, obeyed.
        device: a ``torch.device``, a device string or a Lightning accelerator name.
        style: ``"explain"`` (``fp32`` / ``bf16`` / ``fp16``) or ``"lightning"`` (``32-true`` / ``bf16-mixed`` /
            ... as ``Trainer(precision=...)`` takes them): the spelling of the result.

    Returns:
        A :class:`PrecisionChoice`. An explicit bfloat16 that will be emulated is obeyed and logged as a
        warning saying so.

    Raises:
        ValueError: ``AGG2EXP_AUTO_PRECISION`` holds something other than ``fp32`` or ``bf16``, or bfloat16 is
            asked for on a CUDA device without it (the message says what the device supports).
    """
    asked_text = "auto" if asked is None else str(asked)
    kind = device_type(device)
    if asked_text == "auto":
        pinned = os.environ.get(AUTO_PRECISION_ENV, "").strip().lower()
        if pinned and pinned not in ("fp32", "bf16"):
            raise ValueError(f"{AUTO_PRECISION_ENV}={pinned!r}: expected 'fp32' or 'bf16'")
        if pinned:
            native, why = pinned == "bf16", f"{AUTO_PRECISION_ENV}={pinned} pins precision 'auto'"
        else:
            native, why = native_bf16(kind)
        if style == "lightning":
            used = "bf16-mixed" if native else "32-true"
        else:
            used = "bf16" if native else "fp32"
        choice = PrecisionChoice("auto", used, why)
        log.debug("precision auto -> %s on %s: %s", used, kind, why)  # callers say it once (run log, audit report)
        return choice
    if asked_text in _BF16 or (asked_text == "bf16" and style == "explain"):
        native, why = native_bf16(kind)
        if not native and kind == "cuda":
            others = "32-true and 16-mixed" if style == "lightning" else "fp32 and fp16"
            raise ValueError(f"precision {asked_text!r}: {why}; it supports {others} (or auto)")
        if not native and kind == "cpu":
            log.warning("precision %s as asked, but %s (one 3D convolution ran ~20-40x slower than in fp32 on such a CPU); "
                        "'auto' or fp32 would be faster here", asked_text, why)
        return PrecisionChoice(asked_text, asked_text, f"asked explicitly ({why})")
    return PrecisionChoice(asked_text, asked_text, "asked explicitly")


def lightning_precision_values() -> tuple[str, ...]:
    """The precision values ``lightning.Trainer`` accepts (as strings), plus ``auto``."""
    return ("auto", *_FP32, *_BF16, *_FP16, *_FP64, "transformer-engine", "transformer-engine-float16")


def hardware_summary() -> dict[str, Any]:
    """The facts a speed figure depends on: CPU model and cores, vector capability, native bf16, GPU, torch."""
    import torch

    flags = cpu_flags()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "vector": capability,
        "cpu_flags": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags),
        "native_bf16_cpu": _cpu_bf16(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "gpu": gpus,
        "torch": torch.__version__,
    }


def hardware_line(summary: dict[str, Any] | None = None) -> str:
    """One line for a results file: ``Hardware: AMD EPYC (2 cores; AVX512, avx512_bf16; native bf16: yes); GPU: none; torch 2.13.0``."""
    s = summary if summary is not None else hardware_summary()
    flags = ", ".join(s["cpu_flags"]) or "no AVX2"
    cap = f"; oneDNN capped at {s['onednn_max_cpu_isa']}" if s.get("onednn_max_cpu_isa") else ""
    gpu = ", ".join(s["gpu"]) or "none"
    return (f"Hardware: {s['cpu']} ({s['cores']} cores; torch CPU kernels {s['vector']}; flags {flags}; "
            f"native bf16: {'yes' if s['native_bf16_cpu'] else 'no'}{cap}); GPU: {gpu}; torch {s['torch']}")

"""Will an explanation fit in memory? An estimate before the first pass, and the memory at hand.

A 512^3 CT explained in one pass would need hundreds of GiB of activations; a process that tries is
killed by the operating system without a word, and a long audit loses its place. :func:`explain`
therefore compares :func:`explain_memory_estimate` with :func:`available_memory` before any model
pass and refuses with :class:`ExplanationTooLarge`, whose message gives the estimate, its parts and
what to change (sliding windows, fewer samples per pass, fewer targets).

The estimate counts the whole-volume tensors the engine allocates (stitched logits, labels,
gradient accumulators, attribution maps, perturbed batches) exactly, and the model's activations
as ``pass_bytes_per_voxel`` times the voxels of one pass. That constant belongs to the model:
:func:`measure_pass_bytes_per_voxel` measures it with one probe forward+backward pass at a small
size (a window with sliding windows), and :func:`probe_pass_bytes_per_voxel` caches the figure per
model. Where no probe can run, the fixed :data:`PASS_BYTES_PER_VOXEL` (8 KiB, above what MONAI's
Swin-UNETR used on CPU: 3.0 KiB at feature_size 12, 5.5 KiB at 48, depths 2,2,2,2, at 64^3) is used.
"""
from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Default activation memory of one forward+backward pass, per input voxel (see the module docstring).
PASS_BYTES_PER_VOXEL = 8192.0
#: A forward pass without grad keeps far fewer activations alive; this share of the above.
FORWARD_ONLY_SHARE = 0.5
_GiB = 1024.0**3
#: Largest probe edge (voxels) for a whole-volume explanation (the paper's window size). Per-voxel
#: activations change with size (Swin-UNETR pads its feature maps to multiples of its attention window:
#: 2.1 KiB counted per voxel at 64^3, 1.7 KiB at 96^3), so the probe is as close to the volume as is safe.
PROBE_EDGE = 96
#: CPU probe: peak RSS growth of a forward and two backward passes over the bytes the probe counts (the
#: temporaries of the backward, allocator slack): 1.78-2.17 for MONAI Swin-UNETR (feature_size 12 and 24,
#: 64^3 and 96^3, each in a fresh process)
CPU_TRANSIENT_FACTOR = 2.0
_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ExplanationTooLarge(MemoryError):
    """The explanation would need more memory than is available; the message says how much and why."""


@dataclass
class MemoryEstimate:
    """Bytes an explanation needs at its peak, with the parts that make it up."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """``"12.3 GiB (model pass 8.0 GiB, logits 2.1 GiB, ...)"``, largest parts first."""
        biggest = sorted(self.parts.items(), key=lambda kv: -kv[1])
        inner = ", ".join(f"{k} {_fmt(v)}" for k, v in biggest if v >= 0.01 * self.total)
        return f"{_fmt(self.total)} ({inner})"


def _fmt(nbytes: float) -> str:
    if nbytes >= _GiB:
        return f"{nbytes / _GiB:.1f} GiB"
    return f"{nbytes / 1024.0**2:.1f} MiB"


def explain_memory_estimate(
    spatial: Sequence[int],
    method: str,
    *,
    num_classes: int,
    num_targets: int,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 1,
    batch_size: int = 4,
    pass_bytes_per_voxel: float = PASS_BYTES_PER_VOXEL,
    dtype_bytes: int = 4,
) -> MemoryEstimate:
    """Peak memory of :func:`~agg2exp_lightning.explain.explain` on a volume of this size.

    Args:
        spatial: spatial size ``S`` of the volume.
        method: a method of the method table (name or alias; costed by its row's ``cost`` and
            ``keep_graph``, :mod:`~agg2exp_lightning.explain.methods`), or ``"captum"`` for a Captum
            attribution class (costed as a gradient method).
        num_classes: output classes ``C`` of the model.
        num_targets: explained classes ``T``.
        roi_size: sliding-window size, or ``None`` for one pass over the whole volume.
        sw_batch_size: windows per pass.
        batch_size: input samples per pass (the methods' ``batch_size`` option; 1 for the vanilla gradient).
        pass_bytes_per_voxel: activation memory of one forward+backward pass per input voxel.
        dtype_bytes: bytes per value of the model's input and output (4 for float32).

    Returns:
        A :class:`MemoryEstimate` in bytes.

    Raises:
        ValueError: ``method`` is neither a registered method nor ``"captum"``.

    Example:
        >>> est = explain_memory_estimate((512, 512, 512), "vanilla_gradient", num_classes=17, num_targets=17)
        >>> est.total > 2**40  # one pass over 512^3 voxels: over a TiB of activations
        True
    """
    volume = math.prod(int(s) for s in spatial)
    from agg2exp_lightning.explain.methods import get_method

    spec = None if method == "captum" else get_method(method)
    gradient_method = spec is None or spec.cost == "gradient"
    batch = 1 if spec is not None and spec.keep_graph else max(1, int(batch_size))
    if roi_size is None:
        padded, pass_voxels = volume, batch * volume
    else:
        padded = math.prod(max(int(s), int(r)) for s, r in zip(spatial, roi_size))
        pass_voxels = max(1, int(sw_batch_size)) * math.prod(int(r) for r in roi_size)
    share = 1.0 if gradient_method else FORWARD_ONLY_SHARE
    b = dtype_bytes
    parts = {
        "model pass": share * pass_bytes_per_voxel * pass_voxels,
        "image": 2 * b * volume + (b * padded if roi_size is not None else 0),
        "logits": b * num_classes * padded + (b * padded if roi_size is not None else 0),
        "labels": 2 * 8 * padded,
        "attributions": b * num_targets * volume,
        "aggregation": b * num_targets * volume,
    }
    if gradient_method:
        parts["input samples"] = b * batch * volume
        parts["gradients"] = b * batch * num_targets * padded + b * batch * padded
        parts["accumulator"] = 8 * num_targets * volume
    else:
        parts["input samples"] = b * batch * volume + 8 * volume  # perturbed batch, feature mask
        parts["batch logits"] = b * batch * num_classes * padded
    return MemoryEstimate(float(sum(parts.values())), parts)


def _cgroup_headroom() -> float | None:
    """Bytes left under a cgroup v2 memory limit (containers), or None without one."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return float(int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device | str = "cpu") -> float:
    """Bytes that an explanation on ``device`` can still allocate.

    CUDA: free device memory plus what PyTorch's caching allocator holds unused. CPU: the kernel's
    ``MemAvailable`` (``/proc/meminfo``), capped by a cgroup limit when the process runs under one;
    ``inf`` where neither can be read.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(float(line.split()[1]) * 1024.0)
    except OSError:
        pass
    headroom = _cgroup_headroom()
    if headroom is not None:
        candidates.append(headroom)
    if not candidates and hasattr(os, "sysconf"):
        try:
            candidates.append(float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")))
        except (OSError, ValueError):
            pass
    return min(candidates) if candidates else math.inf


def check_explain_memory(
    estimate: MemoryEstimate,
    limit: float,
    *,
    spatial: Sequence[int],
    method: str,
    roi_size: Sequence[int] | None,
    what: str = "explaining",
) -> None:
    """Raise :class:`ExplanationTooLarge` when ``estimate`` exceeds ``limit`` bytes, saying what to change."""
    if estimate.total <= limit:
        return
    size = "x".join(str(int(s)) for s in spatial)
    if roi_size is None:
        advice = "pass `roi_size` (e.g. the model's training patch, 96x96x96) to explain with sliding windows"
    else:
        advice = ("lower `sw_batch_size` or the method's `batch_size`, explain fewer targets, "
                  "or resample the scan to a coarser spacing")
    raise ExplanationTooLarge(
        f"{what} a volume of {size} voxels with {method} "
        f"({'one pass over the whole volume' if roi_size is None else 'windows of ' + 'x'.join(map(str, roi_size))}) "
        f"needs about {estimate.describe()}, but only {_fmt(limit)} is available: {advice}"
    )


def measure_pass_bytes_per_voxel(
    model: nn.Module, spatial: Sequence[int], *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> float:
    """Activation memory of one forward+backward pass of ``model`` per input voxel, at ``spatial``.

    One pass on a zero input ``[1, 1, *spatial]`` with grad w.r.t. the input only (parameters frozen,
    eval mode, all restored afterwards), then one backward with a one-class cotangent, as the
    gradient methods run it.

    CUDA: the rise of ``torch.cuda.max_memory_allocated`` over the pass. CPU (no allocator
    statistics): the bytes of every tensor autograd saves for the backward (parameters and buffers
    excluded, shared storages counted once) plus the logits, their cotangent and the input gradient,
    times :data:`CPU_TRANSIENT_FACTOR` for temporaries.

    Args:
        model: maps ``[B, 1, *spatial]`` to ``[B, C, *spatial]``.
        spatial: probe size (a window with sliding windows; small, as the pass really runs).
        device: of the probe (default: the model's).
        dtype: of the probe input.

    Returns:
        Bytes per input voxel.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1))
        >>> 0 < measure_pass_bytes_per_voxel(net, (8, 8, 8)) < 1000
        True
    """
    from agg2exp_lightning.explain.model_state import explanation_mode

    p = next(iter(model.parameters()), None)
    device = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    voxels = math.prod(int(s) for s in spatial)
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with explanation_mode(model):
        x = torch.zeros((1, 1, *[int(s) for s in spatial]), device=device, dtype=dtype, requires_grad=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            out = model(x)
            cot = torch.zeros_like(out)
            cot[:, 0] = 1
            torch.autograd.grad(out, x, cot)
            del out, cot
            torch.cuda.synchronize(device)
            return float(torch.cuda.max_memory_allocated(device) - start) / voxels
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        counted = sum(saved.values()) + 2 * out.numel() * out.element_size() + x.numel() * x.element_size()
        del out
    return CPU_TRANSIENT_FACTOR * counted / voxels


def probe_pass_bytes_per_voxel(
    model: nn.Module,
    spatial: Sequence[int],
    roi_size: Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    max_memory: float = math.inf,
) -> float:
    """:func:`measure_pass_bytes_per_voxel` at a probe size for this explanation, cached per model.

    The probe is one window (``roi_size``), or for one pass over the whole volume the volume cut to at
    most :data:`PROBE_EDGE` voxels a side, halved while twice the fixed :data:`PASS_BYTES_PER_VOXEL`
    per probe voxel would exceed half of ``max_memory`` (so the probe itself cannot exhaust memory).
    A model that cannot run the probe (e.g. one that needs a larger input) gets
    :data:`PASS_BYTES_PER_VOXEL`, with a log message.
    """
    if roi_size is not None:
        shape = tuple(int(r) for r in roi_size)
    else:
        edge = PROBE_EDGE
        while edge > 8 and 2 * PASS_BYTES_PER_VOXEL * math.prod(min(int(s), edge) for s in spatial) > max_memory / 2:
            edge //= 2
        shape = tuple(min(int(s), edge) for s in spatial)
    p = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    key = (shape, str(dev), str(dtype))
    try:
        cache = _PROBES.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    if key not in cache:
        try:
            cache[key] = measure_pass_bytes_per_voxel(model, shape, device=dev, dtype=dtype)
        except Exception as err:  # noqa: BLE001 - any failure of the probe falls back to the fixed constant
            log.info("memory probe of %s at %s failed (%s: %s); using %.0f bytes per voxel",
                     type(model).__name__, shape, type(err).__name__, err, PASS_BYTES_PER_VOXEL)
            cache[key] = PASS_BYTES_PER_VOXEL
    return cache[key]

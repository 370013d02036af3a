"""Sliding-window prediction and proxy gradients, window by window (private).

The blended prediction is MONAI's ``sliding_window_inference``: pad the volume up to the window
size, cut windows on the grid of ``dense_patch_slices``, weight each window's logits by the
importance map ``w`` (constant or Gaussian), add them up and divide by the summed weights
``count``. The proxy of class ``c`` on that blended output is linear in the window logits, so its
gradient is the sum over windows of the window's vector-Jacobian product with cotangent
``(w / count[window]) * mask_c[window]`` on channel ``c``. Computing it window by window needs the
memory of one window batch, and equals autograd through the whole stitched volume.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agg2exp_lightning.explain._vjp import PassCounter, target_vjps


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows lie and how they blend, for one spatial size.

    Attributes:
        image_size: the volume's spatial size ``S``.
        padded_size: ``S`` padded up to at least the window size (MONAI pads symmetrically).
        pad: ``F.pad`` widths (last dim first), zeros when no padding is needed.
        crop: slices of the padded grid that hold the original volume.
        slices: one tuple of slices (padded grid) per window.
        weight: ``[*roi]`` blending weights of a window.
        count: ``[*padded]`` summed weights of all windows.
        sw_batch_size: windows per forward pass.
    """

    image_size: tuple[int, ...]
    padded_size: tuple[int, ...]
    pad: tuple[int, ...]
    crop: tuple[slice, ...]
    slices: tuple[tuple[slice, ...], ...]
    weight: Tensor
    count: Tensor
    sw_batch_size: int

    @property
    def num_windows(self) -> int:
        return len(self.slices)


def _scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> tuple[int, ...]:
    """MONAI's rule: ``int(roi * (1 - overlap))`` (at least 1), or the window itself when it fits exactly."""
    out = []
    for size, roi, ov in zip(image_size, roi_size, overlap):
        out.append(int(roi) if roi == size else max(int(roi * (1 - ov)), 1))
    return tuple(out)


def window_plan(
    image_size: Sequence[int],
    roi_size: Sequence[int],
    *,
    sw_batch_size: int = 1,
    overlap: Sequence[float] = (0.25, 0.25, 0.25),
    mode: str = "constant",
    sigma_scale: Sequence[float] = (0.125, 0.125, 0.125),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WindowPlan:
    """The windows and blending weights MONAI's ``sliding_window_inference`` uses for this size.

    Args:
        image_size: spatial size ``S`` of the volume.
        roi_size: window size (one entry per spatial dim).
        sw_batch_size: windows per forward pass.
        overlap: overlap fraction per spatial dim, in ``[0, 1)``.
        mode: ``"constant"`` or ``"gaussian"`` blending.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        device, dtype: of the weights (the input's, as MONAI does).

    Returns:
        A :class:`WindowPlan`.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices

    image_size = tuple(int(s) for s in image_size)
    roi = tuple(int(r) for r in roi_size)
    padded = tuple(max(s, r) for s, r in zip(image_size, roi))
    pad: list[int] = []
    for s, r in zip(reversed(image_size), reversed(roi)):  # F.pad order: last dim first
        diff = max(r - s, 0)
        pad.extend([diff // 2, diff - diff // 2])
    starts = list(reversed(pad[0::2]))
    crop = tuple(slice(b, b + s) for b, s in zip(starts, image_size))
    interval = _scan_interval(padded, roi, overlap)
    slices = tuple(tuple(s) for s in dense_patch_slices(padded, roi, interval))
    weight = compute_importance_map(roi, mode=mode, sigma_scale=list(sigma_scale), device=device, dtype=dtype)
    weight = weight.to(device=device, dtype=dtype)
    count = torch.zeros(padded, device=device, dtype=dtype)
    for sl in slices:
        count[sl] += weight
    return WindowPlan(image_size, padded, tuple(pad), crop, slices, weight, count, int(sw_batch_size))


def _padded(x: Tensor, plan: WindowPlan, value: float = 0.0) -> Tensor:
    return F.pad(x, list(plan.pad), mode="constant", value=value) if any(plan.pad) else x


def _chunks(plan: WindowPlan, batch: int) -> list[list[tuple[int, int]]]:
    """``(sample, window)`` pairs in groups of ``sw_batch_size`` (windows of all samples in a row)."""
    items = [(b, w) for b in range(batch) for w in range(plan.num_windows)]
    return [items[i : i + plan.sw_batch_size] for i in range(0, len(items), plan.sw_batch_size)]


@torch.no_grad()
def blended_logits(model: nn.Module, x: Tensor, plan: WindowPlan, counter: PassCounter | None = None) -> Tensor:
    """``[B, C, *S]`` logits of ``x`` ``[B, 1, *S]``, stitched exactly as MONAI does (no grad)."""
    xp = _padded(x, plan)
    out: Tensor | None = None
    for chunk in _chunks(plan, x.shape[0]):
        win = torch.cat([xp[b : b + 1][(slice(None), slice(None), *plan.slices[w])] for b, w in chunk])
        logits = model(win)
        if counter is not None:
            counter.forward(len(chunk))
        if out is None:
            out = torch.zeros((x.shape[0], logits.shape[1], *plan.padded_size), dtype=logits.dtype, device=logits.device)
        logits = logits * plan.weight.to(logits.dtype)
        for i, (b, w) in enumerate(chunk):
            out[(slice(b, b + 1), slice(None), *plan.slices[w])] += logits[i : i + 1]
    out /= plan.count.to(out.dtype)
    return out[(slice(None), slice(None), *plan.crop)]


def windowed_proxy_gradients(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    targets: Sequence[int],
    plan: WindowPlan,
    counter: PassCounter,
    *,
    vectorize: bool = False,
) -> Tensor:
    """``[B, T, *S]`` gradients of the proxies of the blended prediction, window by window.

    Args:
        model: the network (parameters frozen by the caller).
        x: ``[B, 1, *S]`` inputs (samples of one explanation).
        labels: ``[*S]`` fixed mask labels (from the unperturbed blended prediction).
        targets: class ids.
        plan: the window plan of ``S``.
        counter: counts forward and backward passes.
        vectorize: one batched backward for all targets of a window batch instead of a loop.

    Returns:
        The gradient of ``proxy_c(x_b)`` w.r.t. ``x_b`` for every sample ``b`` and target ``c``.
    """
    xp = _padded(x.detach(), plan)
    lab = _padded(labels[None, None].to(torch.float32), plan, value=-1.0)[0, 0].long()
    scale_all = [plan.weight / plan.count[sl] for sl in plan.slices]  # cotangent weights per window
    grad = torch.zeros((x.shape[0], len(targets), *plan.padded_size), dtype=x.dtype, device=x.device)
    for chunk in _chunks(plan, x.shape[0]):
        win = torch.cat([xp[b : b + 1][(slice(None), slice(None), *plan.slices[w])] for b, w in chunk])
        win.requires_grad_(True)
        logits = model(win)
        counter.forward(len(chunk))
        win_lab = torch.stack([lab[plan.slices[w]] for _, w in chunk])  # [n, *roi]
        scale = torch.stack([scale_all[w] for _, w in chunk]).to(logits.dtype)
        cotangents = {}
        for t, c in enumerate(targets):
            mask = win_lab == c
            if bool(mask.any()):
                cotangents[t] = (c, scale * mask.to(logits.dtype))
        for t, g in target_vjps(logits, win, cotangents, counter, vectorize=vectorize).items():
            for i, (b, w) in enumerate(chunk):
                grad[(b, t, *plan.slices[w])] += g[i, 0]
    return grad[(slice(None), slice(None), *plan.crop)]


def _window_proxy_scales(plan: WindowPlan, labels: Tensor, targets: Sequence[int], dtype: torch.dtype) -> list[Tensor | None]:
    """Per window, ``[T, *roi]`` weights ``(w / count) * 1[label == c_t]`` (``None``: no target in it).

    The proxy of the blended prediction is ``sum_windows sum_v logits_w[c_t] * weights_w[t]``.
    """
    lab = _padded(labels[None, None].to(torch.float32), plan, value=-1.0)[0, 0].long()
    ids = torch.as_tensor(list(targets), dtype=torch.long, device=lab.device).view(-1, *([1] * lab.dim()))
    out: list[Tensor | None] = []
    for sl in plan.slices:
        mask = lab[sl][None] == ids  # [T, *roi]
        out.append((plan.weight / plan.count[sl]).to(dtype)[None] * mask.to(dtype) if bool(mask.any()) else None)
    return out


def window_features(feature_mask: Tensor, plan: WindowPlan) -> list[Tensor]:
    """Feature ids (sorted) that each window of ``plan`` covers, from ``feature_mask`` ``[*S]``."""
    padded = _padded(feature_mask[None, None].to(torch.float32), plan, value=-1.0)[0, 0].long()
    return [ids[ids >= 0] for ids in (torch.unique(padded[sl]) for sl in plan.slices)]


@torch.no_grad()
def windowed_coalition_proxies(
    model: nn.Module,
    base: Tensor,
    image: Tensor,
    feature_mask: Tensor,
    z: Tensor,
    labels: Tensor,
    targets: Sequence[int],
    plan: WindowPlan,
    counter: PassCounter,
    *,
    reuse: bool = True,
    cache: dict[tuple[int, bytes], Tensor] | None = None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """``[N, T]`` proxies (float64) of the coalition inputs ``base + z[feature_mask] * (image - base)``.

    The proxy of the blended prediction is a sum of per-window terms (see the module docstring),
    and window ``w``'s input depends only on the coalition's entries for the features ``w`` covers.
    With ``reuse``, a window is run once per distinct restriction of the coalitions to its
    features, and the other coalitions reuse its term: e.g. a window whose features a coalition
    keeps all present (or all absent) costs no new pass after the first such coalition. Without
    ``reuse`` every (coalition, window) pair is run; the two give the same numbers (each term is
    computed the same way and summed in window order).

    Args:
        model: the network (frozen by the caller).
        base: ``[1, 1, *S]`` baseline (absent features).
        image: ``[1, 1, *S]`` input (present features).
        feature_mask: ``[*S]`` feature ids.
        z: ``[N, M]`` coalitions (0/1).
        labels: ``[*S]`` fixed mask labels.
        targets: class ids.
        plan: the window plan of ``S``.
        counter: counts forward passes (windows per pass: ``sw_batch_size``).
        reuse: share window terms between coalitions that agree on the window's features.
        cache: ``{(window, key): [T] term}`` kept across calls (e.g. the baseline's, then the samples').
        progress: show a progress bar over the window passes.

    Returns:
        ``(proxies [N, T] float64, window passes saved)``: saved against one pass per coalition and
        window (windows holding no target's voxels are never run: their term is zero).
    """
    from tqdm.auto import tqdm

    store = ({} if cache is None else cache) if reuse else {}
    scales = _window_proxy_scales(plan, labels, targets, image.dtype)
    feats = window_features(feature_mask, plan)
    bp, dp = _padded(base, plan), _padded(image - base, plan)
    fm = _padded(feature_mask[None, None].to(torch.float32), plan, value=0.0)[0, 0].long()
    zb = z.to(torch.bool).cpu()
    n, n_win, n_t = zb.shape[0], plan.num_windows, len(targets)
    keys: list[list[tuple[int, bytes]]] = []  # [window][coalition] -> cache key
    todo: dict[tuple[int, bytes], int] = {}  # key -> a coalition that needs it
    for w in range(n_win):
        sub = zb[:, feats[w].cpu()].numpy()
        row = [(w, sub[i].tobytes() if reuse else i.to_bytes(8, "little")) for i in range(n)]
        keys.append(row)
        for i, key in enumerate(row):
            if scales[w] is not None and key not in store and key not in todo:
                todo[key] = i
    items = list(todo.items())
    for start in tqdm(range(0, len(items), plan.sw_batch_size), desc="KernelSHAP windows", disable=not progress, leave=False):
        chunk = items[start : start + plan.sw_batch_size]
        wins = []
        for (w, _), i in chunk:
            keep = zb[i].to(device=fm.device)[fm[plan.slices[w]]].to(image.dtype)
            wins.append(bp[(0, slice(None), *plan.slices[w])] + keep[None] * dp[(0, slice(None), *plan.slices[w])])
        logits = model(torch.stack(wins))
        counter.forward(len(chunk))
        ids = torch.as_tensor(list(targets), dtype=torch.long, device=logits.device)
        for k, ((w, key), _) in enumerate(chunk):
            store[(w, key)] = (logits[k].index_select(0, ids) * scales[w].to(logits.dtype)).flatten(1).sum(1).double().cpu()
    out = torch.zeros((n, n_t), dtype=torch.float64)
    for w in range(n_win):
        if scales[w] is None:
            continue
        out += torch.stack([store[key] for key in keys[w]])
    return out, n * n_win - len(items)

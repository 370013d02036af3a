"""KernelSHAP over feature groups (cubes or predicted regions), all targets in one regression (private).

Coalitions ``z`` in ``{0, 1}^M`` switch feature groups between the input (1) and the baseline (0).
One set of perturbed forward passes gives the proxies ``f(z)`` ``[N, T]`` of every target, and the
Shapley values solve one weighted least-squares problem with ``T`` right-hand sides under the
efficiency constraint ``sum_j phi_j = f(1) - f(0)`` (eliminated exactly: ``phi_M = delta - sum_{j<M}
phi_j``), as in Lundberg & Lee (2017). Coalition sizes are drawn from the Shapley kernel
``p(k) ~ (M - 1) / (k (M - k))`` (uniform weights after that); complements are paired by default
(Covert & Lee, 2021). When the budget covers all ``2^M - 2`` coalitions they are enumerated with
the exact kernel weights and the result is the exact Shapley value of any model.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from agg2exp_lightning.explain._predictor import Predictor
from agg2exp_lightning.explain.baselines import make_baseline
from agg2exp_lightning.utils.options import look_up_option, positive_int

#: Largest feature count for which full enumeration is considered.
_MAX_ENUMERATED_FEATURES = 20


def balanced_splits(size: int, parts: int) -> list[int]:
    """Boundaries of ``min(parts, size)`` contiguous pieces of ``range(size)`` differing by <= 1 voxel."""
    parts = min(parts, size)
    base, extra = divmod(size, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return bounds


def cube_feature_mask(spatial: tuple[int, ...], cubes_per_axis: int | tuple[int, ...] = 8, device: torch.device | str = "cpu") -> tuple[Tensor, int]:
    """Feature ids ``[*S]`` of a grid of cubes tiling the volume exactly.

    Each axis of length ``n`` is cut into ``min(k, n)`` contiguous pieces whose lengths differ by at
    most one voxel (no remainder cube, no wrap-around ids). Ids run in C order over the grid.

    Args:
        spatial: spatial size ``S``.
        cubes_per_axis: pieces per axis (an int for all axes).
        device: of the mask.

    Returns:
        ``(mask [*S] int64, number of cubes)``.

    Example:
        >>> mask, m = cube_feature_mask((10,), 4)
        >>> mask.tolist(), m
        ([0, 0, 0, 1, 1, 1, 2, 2, 3, 3], 4)
    """
    k = (cubes_per_axis,) * len(spatial) if isinstance(cubes_per_axis, int) else tuple(cubes_per_axis)
    if len(k) != len(spatial):
        raise ValueError(f"Expected argument `cubes_per_axis` to be an int or {len(spatial)} ints, but got {cubes_per_axis!r}")
    k = tuple(positive_int("cubes_per_axis", v) for v in k)
    axes, counts = [], []
    for n, parts in zip(spatial, k):
        bounds = balanced_splits(int(n), parts)
        idx = torch.empty(int(n), dtype=torch.long)
        for i in range(len(bounds) - 1):
            idx[bounds[i] : bounds[i + 1]] = i
        axes.append(idx)
        counts.append(len(bounds) - 1)
    mask = torch.zeros(tuple(spatial), dtype=torch.long)
    stride = 1
    for d in reversed(range(len(spatial))):
        shape = [1] * len(spatial)
        shape[d] = spatial[d]
        mask += axes[d].view(shape) * stride
        stride *= counts[d]
    return mask.to(device), int(math.prod(counts))


def semantic_feature_mask(labels: Tensor) -> tuple[Tensor, list[int]]:
    """One feature per label present in ``labels`` ``[*S]``: ``(feature ids [*S], present labels)``."""
    present, inverse = torch.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape), [int(v) for v in present.tolist()]


def shapley_kernel_weight(num_features: int, size: int) -> float:
    """Shapley kernel ``(M - 1) / (C(M, k) k (M - k))`` of a coalition of ``size`` k in ``[1, M-1]``."""
    m, k = num_features, size
    return (m - 1) / (math.comb(m, k) * k * (m - k))


def sample_coalitions(
    num_features: int, n_samples: int, *, paired: bool = True, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, bool]:
    """Coalitions to evaluate and their regression weights.

    Args:
        num_features: ``M`` (>= 2).
        n_samples: budget of coalitions (the full and empty ones are evaluated separately).
        paired: add each sampled coalition's complement.
        generator: random source.

    Returns:
        ``(z [N, M] float64 in {0, 1}, weights [N] float64, exact)``; ``exact`` when all
        ``2^M - 2`` coalitions fit in the budget and were enumerated with the exact kernel weights.
    """
    m = num_features
    if m <= _MAX_ENUMERATED_FEATURES and 2**m - 2 <= n_samples:
        codes = torch.arange(1, 2**m - 1)
        z = ((codes[:, None] >> torch.arange(m)) & 1).to(torch.float64)
        sizes = z.sum(1).long().tolist()
        weights = torch.tensor([shapley_kernel_weight(m, k) for k in sizes], dtype=torch.float64)
        return z, weights, True
    ks = torch.arange(1, m, dtype=torch.float64)
    probs = (m - 1) / (ks * (m - ks))
    n_draw = (n_samples + 1) // 2 if paired else n_samples
    sizes = torch.multinomial(probs / probs.sum(), n_draw, replacement=True, generator=generator) + 1
    ranks = torch.rand((n_draw, m), generator=generator).argsort(1).argsort(1)
    z = (ranks < sizes[:, None]).to(torch.float64)
    if paired:
        z = torch.cat([z, 1 - z])[:n_samples]
    return z, torch.ones(z.shape[0], dtype=torch.float64), False


def solve_shapley(z: Tensor, weights: Tensor, f: Tensor, f_full: Tensor, f_empty: Tensor) -> Tensor:
    """Shapley values ``[M, T]`` from coalition outputs by constrained weighted least squares.

    Minimises ``sum_i w_i (f_i - f_empty - z_i . phi)^2`` subject to ``sum_j phi_j = f_full -
    f_empty`` for every target column at once (one ``lstsq`` with ``T`` right-hand sides).

    Args:
        z: ``[N, M]`` coalitions (0/1).
        weights: ``[N]`` regression weights (> 0).
        f: ``[N, T]`` outputs of the coalitions.
        f_full, f_empty: ``[T]`` outputs of the full input and of the baseline.

    Returns:
        ``[M, T]`` float64.
    """
    z, w, f = z.double().cpu(), weights.double().cpu(), f.double().cpu()
    delta = (f_full.double() - f_empty.double()).cpu()
    m = z.shape[1]
    if m == 1:
        return delta[None]
    x = z[:, :-1] - z[:, -1:]
    y = f - f_empty.double().cpu() - z[:, -1:] * delta
    sw = w.sqrt()[:, None]
    head = torch.linalg.lstsq(sw * x, sw * y, driver="gelsd").solution  # [M-1, T]
    return torch.cat([head, (delta - head.sum(0))[None]])


def kernelshap(
    predictor: Predictor,
    image: Tensor,
    feature_mask: Tensor,
    num_features: int,
    *,
    proxy_at_image: Tensor,
    n_samples: int,
    baseline: Any = 0.0,
    baseline_value: float = 0.0,
    batch_size: int = 4,
    seed: int | None = None,
    paired: bool = True,
    spread: Literal["divide", "broadcast"] = "divide",
    reuse_windows: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """KernelSHAP of every target's proxy over the features of ``feature_mask``.

    Args:
        predictor: model, window plan, fixed mask labels and targets.
        image: ``[1, 1, *S]``.
        feature_mask: ``[*S]`` feature ids in ``[0, num_features)``.
        num_features: ``M``.
        proxy_at_image: ``[T]`` proxies of ``image`` (the full coalition).
        n_samples: coalition budget (>= ``M``).
        baseline, baseline_value: what an absent feature is replaced by (default 0).
        batch_size: perturbed inputs per forward pass.
        seed: seed of the coalition sampling (``None``: torch's global generator).
        paired: sample complements in pairs.
        spread: ``"divide"`` spreads ``phi_j`` evenly over feature ``j``'s voxels (so a map sums
            to ``f(x) - f(baseline)``); ``"broadcast"`` writes ``phi_j`` into every voxel of ``j``
            (Captum's ``KernelShap`` output).
        reuse_windows: with sliding windows, run a window once per distinct set of present
            features inside it and reuse its share of the proxies for every coalition that agrees
            there (same numbers as without; fewer passes).

    Returns:
        ``([T, *S] attributions, diagnostics)``; diagnostics hold ``shapley_values`` ``[M][T]``,
        ``kernelshap_features``, ``kernelshap_samples``, ``kernelshap_exact`` and
        ``kernelshap_efficiency_gap`` (``sum phi - (f(x) - f(b))`` per target, zero up to rounding)
        and, with windows, ``kernelshap_window_passes_saved``.
    """
    n = positive_int("n_samples", n_samples)
    batch_size = positive_int("batch_size", batch_size)
    spread = look_up_option("spread", spread, ("divide", "broadcast"))
    if n < num_features:
        raise ValueError(
            f"Expected argument `n_samples` >= the number of features ({num_features}) so that the Shapley "
            f"regression is determined, but got {n}"
        )
    base = make_baseline(image, baseline, value=baseline_value)
    reuse = bool(reuse_windows)
    f_empty, saved = predictor.coalition_proxies(
        base, image, feature_mask, torch.zeros((1, num_features), dtype=torch.float64), batch_size=1, reuse_windows=reuse
    )
    f_empty = f_empty[0]
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    if num_features == 1:
        z, w, exact = torch.zeros((0, 1), dtype=torch.float64), torch.zeros(0, dtype=torch.float64), True
        f = torch.zeros((0, len(predictor.targets)), dtype=torch.float64)
    else:
        z, w, exact = sample_coalitions(num_features, n, paired=bool(paired), generator=gen)
        f, more = predictor.coalition_proxies(base, image, feature_mask, z, batch_size=batch_size, reuse_windows=reuse)
        saved += more
    phi = solve_shapley(z, w, f, proxy_at_image, f_empty)  # [M, T]
    values = phi.to(device=image.device, dtype=image.dtype)
    if spread == "divide":
        sizes = torch.bincount(feature_mask.reshape(-1), minlength=num_features).to(values)
        values = values / sizes.clamp_min(1)[:, None]
    attr = values[feature_mask].movedim(-1, 0).contiguous()  # [T, *S]
    delta = proxy_at_image.double().cpu() - f_empty.double().cpu()
    diag = {"kernelshap_window_passes_saved": int(saved)} if predictor.plan is not None else {}
    return attr, diag | {
        "shapley_values": phi.tolist(),
        "kernelshap_features": int(num_features),
        "kernelshap_samples": int(z.shape[0]),
        "kernelshap_exact": bool(exact),
        "kernelshap_efficiency_gap": (phi.sum(0) - delta).tolist(),
    }

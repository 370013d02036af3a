"""KernelSHAP over feature groups (cubes or predicted regions), all targets in one regression (private).

Two estimators share one set of coalitions and forward passes across all targets:

``"constrained"`` (the corrected protocol's). Coalitions ``z`` in ``{0, 1}^M`` switch feature groups
between the input (1) and the baseline (0). One set of perturbed forward passes gives the proxies
``f(z)`` ``[N, T]`` of every target, and the Shapley values solve one weighted least-squares problem
with ``T`` right-hand sides under the efficiency constraint ``sum_j phi_j = f(1) - f(0)`` (eliminated
exactly: ``phi_M = delta - sum_{j<M} phi_j``), as in Lundberg & Lee (2017). Coalition sizes are drawn
from the Shapley kernel ``p(k) ~ (M - 1) / (k (M - k))`` (uniform weights after that); complements are
paired by default (Covert & Lee, 2021). When the budget covers all ``2^M - 2`` coalitions they are
enumerated with the exact kernel weights and the result is the exact Shapley value of any model.

``"captum"`` (the paper protocol's: the Agg2Exp authors ran Captum's ``KernelShap``). The full and the
empty coalition, then ``n_samples - 2`` coalitions drawn from the Shapley kernel without their
complements (a size ``k`` with probability ``~ (M - 1) / (k (M - k))``, then the ``k`` features with the
largest of ``M`` standard normal draws), each weighted 1 and the full and empty ones 1e6, fitted by a
linear regression with an intercept (weighted least squares; the intercept is dropped). The draws
are made in the order and with the calls Captum makes, so ``seed=s`` gives the coalitions Captum
draws after ``torch.manual_seed(s)`` (``seed=None`` draws from torch's global generator, as Captum).
Its variance is higher: no complements (antithetic pairs), and an efficiency constraint only
approximated by the large weights.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from agg2exp_lightning.explain._predictor import Predictor
from agg2exp_lightning.explain.baselines import make_baseline
from agg2exp_lightning.utils.options import look_up_option, positive_int

#: The two estimators (see the module docstring): the paper protocol's and the corrected one's.
ESTIMATORS = ("captum", "constrained")
#: Regression weight of the full and the empty coalition in Captum's ``KernelShap`` (its ``inf_weight``).
CAPTUM_INF_WEIGHT = 1e6

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


def modulo_cube_mask(spatial: tuple[int, ...], num_components: int = 512, device: torch.device | str = "cpu") -> tuple[Tensor, int]:
    """Feature ids ``[*S]`` of the Agg2Exp authors' cubes (``create_cubical_mask``, the paper protocol's).

    The cube side is ``min(S) // int(num_components ** (1/3))`` (the floating-point cube root,
    truncated: 512 gives 7.999..., so ``// 7``); cubes start at multiples of the side on every axis
    (the last ones along an axis are cut by the border), are numbered in C order and their ids taken
    modulo ``num_components``, so one feature can be several cubes far apart.

    Args:
        spatial: spatial size ``S``.
        num_components: ``n``, the largest number of features.
        device: of the mask.

    Returns:
        ``(mask [*S] int64, number of features)``; the number is ``min(n, cubes)``.

    Raises:
        ValueError: a volume smaller than ``int(n ** (1/3))`` voxels along some axis (side 0).

    Example:
        >>> mask, m = modulo_cube_mask((5, 4), 8)  # int(8 ** (1/3)) = 2: side 4 // 2 = 2
        >>> mask.tolist(), m
        ([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3], [4, 4, 5, 5]], 6)
    """
    n = positive_int("num_components", num_components)
    per_axis = int(n ** (1 / 3))
    side = min(int(v) for v in spatial) // per_axis
    if side == 0:
        raise ValueError(f"Expected every axis of the volume to have at least {per_axis} voxels for {n} cube components, "
                         f"but got spatial size {tuple(spatial)}")
    mask = torch.zeros((), dtype=torch.long)
    count = 1
    for d, size in enumerate(spatial):
        shape = [1] * len(spatial)
        shape[d] = int(size)
        mask = mask * (-(-int(size) // side)) + (torch.arange(int(size)) // side).view(shape)
        count *= -(-int(size) // side)
    return (mask % n).to(device), min(n, count)


def cube_mask(
    spatial: tuple[int, ...], cubes_per_axis: int | tuple[int, ...] = 8, kind: Literal["balanced", "modulo"] = "balanced",
    device: torch.device | str = "cpu",
) -> tuple[Tensor, int]:
    """The cube features of a protocol: ``"balanced"`` (:func:`cube_feature_mask`) or ``"modulo"``
    (:func:`modulo_cube_mask` with ``cubes_per_axis ** 3`` components: 8 gives the authors' 512)."""
    kind = look_up_option("cube_mask", kind, ("balanced", "modulo"))
    if kind == "balanced":
        return cube_feature_mask(spatial, cubes_per_axis, device=device)
    if not isinstance(cubes_per_axis, int) or isinstance(cubes_per_axis, bool):
        raise ValueError(f"Expected argument `cubes_per_axis` to be one int with cube_mask='modulo' (the authors' cubes have "
                         f"one side for all axes), but got {cubes_per_axis!r}")
    return modulo_cube_mask(spatial, positive_int("cubes_per_axis", cubes_per_axis) ** 3, device=device)


def semantic_feature_mask(labels: Tensor, kind: Literal["present", "label_range"] = "present") -> tuple[Tensor, list[int]]:
    """Semantic features of a label map ``[*S]``: ``(feature ids [*S], the label of each feature)``.

    ``"present"``: one feature per label present. ``"label_range"`` (the paper protocol's, as Captum
    numbers a feature mask): one feature per label id from the lowest to the highest present one, so a
    label absent from the map in between is a feature without voxels (its Shapley value is 0).
    """
    kind = look_up_option("features", kind, ("present", "label_range"))
    if kind == "label_range":
        low, high = int(labels.min()), int(labels.max())
        return labels - low, list(range(low, high + 1))
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


def kernel_sampled_coalitions(num_features: int, n_draws: int, generator: torch.Generator | None = None) -> Tensor:
    """``[n_draws, M]`` float64 coalitions drawn from the Shapley kernel as Captum's ``KernelShap`` draws them.

    For each coalition: a size ``k`` in ``[1, M-1]`` with probability ``~ (M - 1) / (k (M - k))`` (one
    ``torch.multinomial`` draw, float32 probabilities), then the ``k`` features holding the largest of
    ``M`` standard normal values (one ``torch.randn`` of shape ``[1, M]``). With ``generator=None``
    the draws come from torch's global generator, as Captum's do.
    """
    m = int(num_features)
    if m < 2:
        raise ValueError(f"Expected at least 2 features to sample coalitions from, but got {m}")
    ks = torch.arange(m, dtype=torch.float32)
    probs = (m - 1) / (ks * (m - ks))
    probs[0] = 0.0
    probs = (probs / probs.sum(-1, keepdim=True))[None]
    z = torch.zeros((n_draws, m), dtype=torch.float64)
    for i in range(n_draws):
        size = int(torch.multinomial(probs, 1, True, generator=generator))
        scores = torch.randn((1, m), generator=generator, dtype=torch.float32)[0]
        z[i, scores.argsort(descending=True)[:size]] = 1.0
    return z


def solve_linear_regression(z: Tensor, weights: Tensor, f: Tensor) -> Tensor:
    """Coefficients ``[M, T]`` of the weighted linear regression of ``f`` ``[N, T]`` on ``z`` ``[N, M]`` with an intercept.

    Minimises ``sum_i w_i (f_i - b - z_i . phi)^2`` over ``phi`` and ``b`` for every column at once:
    ``z`` and ``f`` centred on their weighted means, then least squares on the rows scaled by
    ``sqrt(w)`` (the minimum-norm solution when ``z`` has fewer independent rows than columns).
    """
    z, w, f = z.double().cpu(), weights.double().cpu(), f.double().cpu()
    total = w.sum()
    z_mean = (w[:, None] * z).sum(0) / total
    f_mean = (w[:, None] * f).sum(0) / total
    sw = w.sqrt()[:, None]
    return torch.linalg.lstsq(sw * (z - z_mean), sw * (f - f_mean), driver="gelsd").solution


def minimum_samples(num_features: int, estimator: str) -> int:
    """The smallest ``n_samples`` that determines the regression: ``M`` (constrained) or ``M + 1``
    (captum: ``M`` coefficients and an intercept, the full and empty coalitions included)."""
    return int(num_features) + (1 if estimator == "captum" else 0)


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
    paired: bool | None = None,
    spread: Literal["divide", "broadcast"] = "divide",
    reuse_windows: bool = True,
    estimator: Literal["constrained", "captum"] = "constrained",
) -> tuple[Tensor, dict[str, Any]]:
    """KernelSHAP of every target's proxy over the features of ``feature_mask``.

    Args:
        predictor: model, window plan, fixed mask labels and targets.
        image: ``[1, 1, *S]``.
        feature_mask: ``[*S]`` feature ids in ``[0, num_features)``.
        num_features: ``M``.
        proxy_at_image: ``[T]`` proxies of ``image`` (the full coalition).
        n_samples: coalition budget: sampled coalitions (constrained, >= ``M``), or all coalitions
            with the full and the empty one (captum, as Captum counts them, >= ``M + 1``).
        baseline, baseline_value: what an absent feature is replaced by (default 0).
        batch_size: perturbed inputs per forward pass.
        seed: seed of the coalition sampling (``None``: torch's global generator).
        paired: sample complements in pairs (constrained only; default True there).
        spread: ``"divide"`` spreads ``phi_j`` evenly over feature ``j``'s voxels (so a map sums
            to ``f(x) - f(baseline)``); ``"broadcast"`` writes ``phi_j`` into every voxel of ``j``
            (Captum's ``KernelShap`` output).
        reuse_windows: with sliding windows, run a window once per distinct set of present
            features inside it and reuse its share of the proxies for every coalition that agrees
            there (same numbers as without; fewer passes).
        estimator: ``"constrained"`` or ``"captum"`` (see the module docstring).

    Returns:
        ``([T, *S] attributions, diagnostics)``; diagnostics hold ``shapley_values`` ``[M][T]``,
        ``kernelshap_features``, ``kernelshap_samples`` (coalitions evaluated besides the full and the
        empty one: ``n_samples - 2`` for captum), ``kernelshap_exact``, ``kernelshap_estimator``
        and ``kernelshap_efficiency_gap`` (``sum phi - (f(x) - f(b))`` per target: zero up to rounding
        for constrained, small for captum) and, with windows, ``kernelshap_window_passes_saved``.
    """
    n = positive_int("n_samples", n_samples)
    batch_size = positive_int("batch_size", batch_size)
    spread = look_up_option("spread", spread, ("divide", "broadcast"))
    estimator = look_up_option("estimator", estimator, ESTIMATORS)
    if estimator == "captum" and paired:
        raise ValueError("Expected argument `paired` to be False or None with estimator='captum' (Captum's KernelShap "
                         "samples no complements), but got True")
    needed = minimum_samples(num_features, estimator)
    if n < needed:
        raise ValueError(
            f"Expected argument `n_samples` >= {needed} (the number of features, {num_features}"
            f"{', plus the intercept' if estimator == 'captum' else ''}) so that the Shapley regression is determined, but got {n}"
        )
    base = make_baseline(image, baseline, value=baseline_value)
    reuse = bool(reuse_windows)
    f_empty, saved = predictor.coalition_proxies(
        base, image, feature_mask, torch.zeros((1, num_features), dtype=torch.float64), batch_size=1, reuse_windows=reuse
    )
    f_empty = f_empty[0]
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    delta = proxy_at_image.double().cpu() - f_empty.double().cpu()
    if num_features == 1:  # one feature holds the whole difference
        z, exact, phi = torch.zeros((0, 1), dtype=torch.float64), True, delta[None]
    elif estimator == "captum":
        z, exact = kernel_sampled_coalitions(num_features, n - 2, generator=gen), False
        f, more = predictor.coalition_proxies(base, image, feature_mask, z, batch_size=batch_size, reuse_windows=reuse)
        saved += more
        ones, zeros = torch.ones((1, num_features), dtype=torch.float64), torch.zeros((1, num_features), dtype=torch.float64)
        weights = torch.cat([torch.full((2,), CAPTUM_INF_WEIGHT, dtype=torch.float64), torch.ones(z.shape[0], dtype=torch.float64)])
        outputs = torch.cat([proxy_at_image.double().cpu()[None], f_empty.double().cpu()[None], f])
        phi = solve_linear_regression(torch.cat([ones, zeros, z]), weights, outputs)  # [M, T]
    else:
        z, w, exact = sample_coalitions(num_features, n, paired=paired is None or bool(paired), generator=gen)
        f, more = predictor.coalition_proxies(base, image, feature_mask, z, batch_size=batch_size, reuse_windows=reuse)
        saved += more
        phi = solve_shapley(z, w, f, proxy_at_image, f_empty)  # [M, T]
    values = phi.to(device=image.device, dtype=image.dtype)
    if spread == "divide":
        sizes = torch.bincount(feature_mask.reshape(-1), minlength=num_features).to(values)
        values = values / sizes.clamp_min(1)[:, None]
    attr = values[feature_mask].movedim(-1, 0).contiguous()  # [T, *S]
    diag = {"kernelshap_window_passes_saved": int(saved)} if predictor.plan is not None else {}
    return attr, diag | {
        "shapley_values": phi.tolist(),
        "kernelshap_features": int(num_features),
        "kernelshap_samples": int(z.shape[0]),
        "kernelshap_exact": bool(exact),
        "kernelshap_estimator": estimator,
        "kernelshap_efficiency_gap": (phi.sum(0) - delta).tolist(),
    }

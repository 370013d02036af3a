"""Vanilla Gradient, SmoothGrad and Integrated Gradients of the proxy, all targets at once (private).

Every method is an average of proxy gradients over samples of the input (the input itself; noisy
copies; points on a straight path). Samples go through the model ``batch_size`` at a time, and one
forward pass per batch serves all targets (:meth:`Predictor.gradients`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from agg2exp_lightning.explain._predictor import Predictor
from agg2exp_lightning.explain.baselines import make_baseline
from agg2exp_lightning.utils.options import look_up_option, nonnegative_float, positive_int

#: Integration rules of Integrated Gradients shared with Captum (Captum's names).
IG_RULES: tuple[str, ...] = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
#: The published Agg2Exp rule (not in Captum): ``n`` equally weighted points ``linspace(0, 1, n)``, both ends included.
PAPER_IG_RULE = "uniform_inclusive"


def integration_points(n_steps: int, rule: str = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Points ``alpha_k`` in ``[0, 1]`` and weights ``w_k`` (summing to 1) of an IG rule.

    Args:
        n_steps: number of points.
        rule: one of :data:`IG_RULES`, the same points and weights as Captum's
            ``approximation_methods`` for that name; or :data:`PAPER_IG_RULE`, the published
            Agg2Exp rule (``torch.linspace(0, 1, n)``, each weighted ``1/n``).

    Returns:
        ``(alphas [n], weights [n])`` in float64.

    Example:
        >>> integration_points(3, "riemann_trapezoid")[1]
        tensor([0.2500, 0.5000, 0.2500], dtype=torch.float64)
    """
    n = positive_int("n_steps", n_steps)
    rule = look_up_option("integration", rule, (*IG_RULES, PAPER_IG_RULE))
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (nodes + 1)), torch.from_numpy(0.5 * weights)
    if rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError(f"Expected argument `n_steps` >= 2 for the trapezoid rule, but got {n}")
        w = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n - 1)
        return torch.linspace(0, 1, n, dtype=torch.float64), w
    if rule == PAPER_IG_RULE:
        return torch.linspace(0, 1, n, dtype=torch.float64), torch.full((n,), 1.0 / n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (k + offset) / n, torch.full((n,), 1.0 / n, dtype=torch.float64)


def _weighted_gradients(predictor: Predictor, sample: Callable[[int, int], Tensor], weights: Tensor, batch_size: int, shape: tuple[int, ...]) -> Tensor:
    """``sum_k weights[k] * grad proxy(sample k)``, samples made ``batch_size`` at a time: ``[T, *S]``."""
    acc = torch.zeros((len(predictor.targets), *shape), dtype=torch.float64, device=weights.device)
    for start, stop in predictor.batches(len(weights), batch_size, "gradient samples"):
        grads = predictor.gradients(sample(start, stop))  # [b, T, *S]
        w = weights[start:stop].view(-1, *([1] * (grads.dim() - 1)))
        acc += (w * grads.to(torch.float64)).sum(0)
    return acc


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator().manual_seed(int(seed))


def vanilla_gradient(predictor: Predictor, image: Tensor, *, batch_size: int = 4, vectorize: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """Gradient of each target's proxy at ``image`` ``[1, 1, *S]``: ``([T, *S], diagnostics)``."""
    predictor.vectorize = bool(vectorize)
    positive_int("batch_size", batch_size)
    grads = predictor.gradients(image)[0]
    return grads, {}


def smoothgrad(
    predictor: Predictor,
    image: Tensor,
    *,
    n_samples: int = 20,
    noise_level: float = 0.1,
    stdev: float | None = None,
    seed: int | None = None,
    batch_size: int = 4,
    vectorize: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """Mean proxy gradient over ``image + N(0, sigma^2)`` samples (mask fixed from ``image``).

    Args:
        predictor: model, window plan, fixed mask and targets.
        image: ``[1, 1, *S]``.
        n_samples: number of noisy copies.
        noise_level: ``sigma = noise_level * (max(image) - min(image))`` (paper: 0.1).
        stdev: an absolute ``sigma`` (overrides ``noise_level``); 0 gives the vanilla gradient.
        seed: seed of the noise (``None``: torch's global generator).
        batch_size: noisy copies per forward pass.
        vectorize: batched backward over targets.

    Returns:
        ``([T, *S] mean gradient, {"smoothgrad_sigma": sigma})``.
    """
    n = positive_int("n_samples", n_samples)
    batch_size = positive_int("batch_size", batch_size)
    predictor.vectorize = bool(vectorize)
    if stdev is None:
        sigma = nonnegative_float("noise_level", noise_level) * float(image.max() - image.min())
    else:
        sigma = nonnegative_float("stdev", stdev)
    gen = _generator(seed)

    def sample(start: int, stop: int) -> Tensor:
        noise = torch.randn((stop - start, *image.shape[1:]), generator=gen, dtype=image.dtype, device="cpu")
        return image + sigma * noise.to(image.device)

    weights = torch.full((n,), 1.0 / n, dtype=torch.float64, device=image.device)
    acc = _weighted_gradients(predictor, sample, weights, batch_size, tuple(image.shape[2:]))
    return acc.to(image.dtype), {"smoothgrad_sigma": sigma}


def integrated_gradients(
    predictor: Predictor,
    image: Tensor,
    *,
    proxy_at_image: Tensor,
    n_steps: int = 20,
    integration: Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle", "uniform_inclusive"] = "gausslegendre",
    baseline: Any = "zero",
    baseline_value: float = 0.0,
    baseline_sigma: float | None = None,
    blur_sigma: float = 5.0,
    seed: int | None = None,
    batch_size: int = 4,
    vectorize: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """``(x - b) * sum_k w_k grad proxy(b + alpha_k (x - b))`` per target, with its completeness gap.

    Args:
        predictor: model, window plan, fixed mask and targets.
        image: ``[1, 1, *S]`` input ``x``.
        proxy_at_image: ``[T]`` proxies of ``image`` (from the unperturbed pass).
        n_steps: number of path points.
        integration: rule of :func:`integration_points`.
        baseline, baseline_value, baseline_sigma, blur_sigma: the reference ``b``
            (:func:`~agg2exp_lightning.explain.baselines.make_baseline`).
        seed: seed of a ``"gaussian"`` baseline.
        batch_size: path points per forward pass.
        vectorize: batched backward over targets.

    Returns:
        ``([T, *S], diagnostics)`` with ``ig_completeness_gap`` (``sum(attr) - (f(x) - f(b))`` per
        target), ``ig_completeness_relative`` (gap / ``|f(x) - f(b)|``) and ``ig_delta``
        (``f(x) - f(b)``); one extra forward pass evaluates ``f(b)``.
    """
    alphas, weights = integration_points(n_steps, integration)
    batch_size = positive_int("batch_size", batch_size)
    predictor.vectorize = bool(vectorize)
    base = make_baseline(image, baseline, value=baseline_value, sigma=baseline_sigma, blur_sigma=blur_sigma, generator=_generator(seed))
    diff = image - base
    alphas = alphas.to(image.device)

    def sample(start: int, stop: int) -> Tensor:
        a = alphas[start:stop].to(image.dtype).view(-1, *([1] * (image.dim() - 1)))
        return base + a * diff

    acc = _weighted_gradients(predictor, sample, weights.to(image.device), batch_size, tuple(image.shape[2:]))
    attr = (diff[0].to(torch.float64) * acc).to(image.dtype)  # [T, *S]
    delta = (proxy_at_image.to(torch.float64) - predictor.proxies(base)[0].to(torch.float64))
    gap = attr.to(torch.float64).flatten(1).sum(1) - delta
    rel = gap.abs() / delta.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return attr, {
        "ig_completeness_gap": gap.tolist(),
        "ig_completeness_relative": rel.tolist(),
        "ig_delta": delta.tolist(),
    }

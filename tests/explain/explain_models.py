"""Tiny models for the explanation-engine tests: known attributions by construction.

Not a test module: imported by conftest.py and the tests beside it (unique name, no package).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class RegionNet(nn.Module):
    """Class ``k`` is predicted exactly on region ``k`` of a fixed label map, and its logits depend
    only on the intensities of region ``k`` (weight ``alpha_k``) and of one context region
    ``context[k]`` (through that region's mean, weight ``beta_k``)::

        logit_k(v) = 1[R(v) = k] * (10 + alpha_k x(v) + beta_k mean_{u in R_context[k]} x(u))

    So the proxy of ``k`` is linear: its gradient is ``alpha_k`` on region ``k`` and
    ``beta_k |R_k| / |R_j|`` on region ``j = context[k]``; the VG mass shares are
    ``alpha / (alpha + beta)`` (own) and ``beta / (alpha + beta)`` (context), and the Shapley value
    of region ``j`` (baseline 0) is ``beta_k |R_k| mean_j(x)``.
    """

    def __init__(self, regions: Tensor, alpha: Tensor, beta: Tensor, context: list[int]) -> None:
        super().__init__()
        k = len(alpha)
        self.register_buffer("onehot", nn.functional.one_hot(regions.long(), k).movedim(-1, 0).to(alpha.dtype))
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.context = list(context)

    def forward(self, x: Tensor) -> Tensor:
        k = self.onehot.shape[0]
        sizes = self.onehot.flatten(1).sum(1)
        means = torch.einsum("bv,kv->bk", x.flatten(1), self.onehot.flatten(1)) / sizes  # [B, K]
        ctx = means[:, self.context]  # [B, K]
        shape = (-1, k, *([1] * (x.dim() - 2)))
        return self.onehot * (10 + self.alpha.view(shape) * x + (self.beta.view(1, -1) * ctx).view(shape))


class SmoothConvNet(nn.Module):
    """conv -> tanh -> conv -> softplus-ish nonlinearity: smooth, translation-equivariant (windows)."""

    def __init__(self, classes: int = 4, hidden: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64, dims: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.c1 = conv(1, hidden, 3, padding=1).to(dtype)
        self.c2 = conv(hidden, classes, 3, padding=1).to(dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.7)

    def forward(self, x: Tensor) -> Tensor:
        return self.c2(torch.tanh(self.c1(x))) + 0.1 * x**2


def shapley_from_values(value_of, m: int, n_targets: int) -> Tensor:
    """The Shapley formula over all subsets of ``m`` features: ``[M, T]`` in float64.

    ``value_of(subset)`` is the coalition value (``[T]``) of the features in the sorted tuple ``subset`` (present),
    the others being absent; every subset is evaluated once.
    """
    import itertools
    import math

    value = {s: value_of(s) for r in range(m + 1) for s in itertools.combinations(range(m), r)}
    phi = torch.zeros(m, n_targets, dtype=torch.float64)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for r in range(m):
            w = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
            for s in itertools.combinations(others, r):
                phi[i] += w * (value[tuple(sorted(s + (i,)))] - value[s])
    return phi

"""One forward pass, a backward pass per target: the shared gradient step (private)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PassCounter:
    """Counts model calls (``forward_passes``), the samples they held, and backward passes."""

    forward_passes: int = 0
    forward_samples: int = 0
    backward_passes: int = 0

    def forward(self, samples: int) -> None:
        self.forward_passes += 1
        self.forward_samples += int(samples)

    def backward(self, n: int = 1) -> None:
        self.backward_passes += int(n)

    def as_dict(self) -> dict[str, int]:
        return {
            "forward_passes": self.forward_passes,
            "forward_samples": self.forward_samples,
            "backward_passes": self.backward_passes,
        }


def target_vjps(
    logits: Tensor,
    inputs: Tensor,
    cotangents: dict[int, tuple[int, Tensor]],
    counter: PassCounter,
    *,
    vectorize: bool = False,
) -> dict[int, Tensor]:
    """Vector-Jacobian products of ``logits`` w.r.t. ``inputs``, one per target, from one graph.

    Args:
        logits: ``[n, C, *W]`` output of one forward pass with grad.
        inputs: ``[n, 1, *W]`` leaf that requires grad.
        cotangents: ``{key: (class c, [n, *W] weights)}``: the cotangent is the weights on channel
            ``c`` and zero on the other channels (the gradient of ``sum_v weights * logits_c``).
        counter: counts the backward passes.
        vectorize: one ``is_grads_batched`` backward (vmap over the targets) instead of a loop
            with ``retain_graph``.

    Returns:
        ``{key: [n, 1, *W]}`` gradients; empty when ``cotangents`` is.
    """
    if not cotangents:
        return {}
    keys = list(cotangents)
    if not logits.requires_grad:  # logits that do not depend on the input: zero gradients
        return {key: torch.zeros_like(inputs) for key in keys}
    if vectorize:
        stacked = logits.new_zeros((len(keys), *logits.shape))
        for k, key in enumerate(keys):
            c, w = cotangents[key]
            stacked[k, :, c] = w
        (g,) = torch.autograd.grad(logits, inputs, stacked, is_grads_batched=True)
        counter.backward(1)
        return {key: g[k] for k, key in enumerate(keys)}
    out = {}
    for k, key in enumerate(keys):
        c, w = cotangents[key]
        cot = torch.zeros_like(logits)  # fresh each time: a gradient may alias its cotangent
        cot[:, c] = w
        (g,) = torch.autograd.grad(logits, inputs, cot, retain_graph=k < len(keys) - 1)
        counter.backward(1)
        out[key] = g
    return out

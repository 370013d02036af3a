"""The Agg2Exp proxy output: one scalar per class from a segmentation model's logits.

For class ``c`` the proxy is the sum of the class-``c`` logits over the voxels that the model
predicts as ``c`` (argmax == c). The mask comes from the prediction on the *unperturbed* input
and is held fixed for every perturbed or noisy copy of it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def prediction_labels(logits: Tensor) -> Tensor:
    """Argmax label map ``[B, *S]`` (int64) of logits ``[B, C, *S]``."""
    if logits.dim() < 3:
        raise ValueError(f"Expected logits of shape [B, C, *spatial], got shape {tuple(logits.shape)}")
    return logits.argmax(dim=1)


def proxy_output(logits: Tensor, labels: Tensor, targets: Sequence[int] | Tensor) -> Tensor:
    """Masked sum of class logits, the scalar that Agg2Exp attributes.

    Args:
        logits: ``[B, C, *S]`` class logits (of a perturbed or unperturbed input).
        labels: ``[B, *S]`` or ``[*S]`` integer label map fixed from the unperturbed prediction;
            broadcast over the batch.
        targets: class ids ``c`` to compute the proxy for.

    Returns:
        ``[B, T]``: ``sum_v logits[b, c_t, v] * 1[labels[b, v] == c_t]``.

    Example:
        >>> logits = torch.randn(2, 3, 4, 4, 4)
        >>> proxy_output(logits, prediction_labels(logits)[0], [0, 2]).shape
        torch.Size([2, 2])
    """
    targets_t = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    spatial = logits.shape[2:]
    if labels.shape[-len(spatial):] != spatial:
        raise ValueError(
            f"Expected labels with spatial shape {tuple(spatial)}, got shape {tuple(labels.shape)}"
        )
    if labels.dim() == len(spatial):
        labels = labels.unsqueeze(0)
    selected = logits.index_select(1, targets_t)  # [B, T, *S]
    mask = labels.unsqueeze(1) == targets_t.view(1, -1, *([1] * len(spatial)))  # [B|1, T, *S]
    return (selected * mask.to(selected.dtype)).flatten(2).sum(-1)

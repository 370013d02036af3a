"""A context manager that readies a model for attribution and restores everything it touched."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from agg2exp_lightning.utils.cpu_conv import onednn_conv3d

__all__ = ["explanation_mode"]


@contextlib.contextmanager
def explanation_mode(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with frozen parameters, leaving inference mode, then restore.

    Inside the block: ``torch.inference_mode(False)`` and ``torch.enable_grad()`` hold (so
    gradients work even when the caller runs under ``torch.inference_mode()``, as Lightning's
    validation loop does); every module is in eval mode (when ``eval_mode``) and no parameter
    requires grad (attribution needs gradients w.r.t. the input only, so autograd neither
    computes nor stores anything for the weights). On exit, also after an exception, every
    module's ``training`` flag, every parameter's ``requires_grad``, the grad mode and the
    inference mode are restored exactly. No hook is registered. Batch-one fp32 CPU 3D convolutions that
    PyTorch would run with its slow native kernel go through oneDNN inside the block
    (:func:`~agg2exp_lightning.utils.cpu_conv.onednn_conv3d`; the same values up to fp32 rounding).

    Args:
        model: the network.
        eval_mode: switch to eval mode (dropout off, normalisation with running statistics).

    Yields:
        ``model``.

    Example:
        >>> net = nn.Sequential(nn.Dropout(0.5)).train()
        >>> with explanation_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    training = [(m, m.training) for m in model.modules()]
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    with torch.inference_mode(False), torch.enable_grad(), onednn_conv3d():
        try:
            if eval_mode:
                model.eval()
            for p, _ in requires_grad:
                p.requires_grad_(False)
            yield model
        finally:
            for m, flag in training:
                m.training = flag
            for p, flag in requires_grad:
                p.requires_grad_(flag)

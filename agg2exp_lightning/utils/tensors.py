"""Tensors without MONAI's metadata: the one place that unwraps a ``MetaTensor``."""
from __future__ import annotations

from typing import Any


def plain_tensor(value: Any) -> Any:
    """``value`` as a plain :class:`torch.Tensor` when it is a MONAI ``MetaTensor`` (``as_tensor()``),
    a tensor from a numpy array, otherwise ``value`` unchanged.

    Checkpoints, ``torch.save`` and Captum want plain tensors; MONAI transforms return MetaTensors.
    """
    if hasattr(value, "as_tensor"):
        return value.as_tensor()
    import numpy as np

    if isinstance(value, np.ndarray):
        import torch

        return torch.from_numpy(value)
    return value


def tensor_argument(name: str, value: Any, expected: str = "a torch.Tensor or numpy array") -> Any:
    """``value`` as a plain tensor (numpy arrays converted, MetaTensors unwrapped), or a ValueError
    naming the argument ``name`` and what was ``expected`` when it is neither a tensor nor an array.

    Example:
        >>> tensor_argument("image", [1, 2])
        Traceback (most recent call last):
        ValueError: Expected argument `image` to be a torch.Tensor or numpy array, but got list
    """
    import torch

    value = plain_tensor(value)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"Expected argument `{name}` to be {expected}, but got {type(value).__name__}")
    return value

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

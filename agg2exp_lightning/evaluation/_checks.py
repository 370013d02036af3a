"""Argument checks and warnings shared by the attribution metrics (private)."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from agg2exp_lightning.utils import tensor_argument
from agg2exp_lightning.utils.options import positive_int  # noqa: F401 - the metrics import it from here


class UndefinedScoreWarning(RuntimeWarning):
    """A score is NaN because it is undefined for these inputs (e.g. a correlation with a constant)."""


def warn_undefined(message: str) -> None:
    """Warn that a score is returned as NaN, pointing at the caller of the public metric."""
    warnings.warn(message, UndefinedScoreWarning, stacklevel=3)


def as_tensor(name: str, value: Tensor | np.ndarray) -> Tensor:
    """A floating tensor from a tensor or array, or a ValueError naming ``name``."""
    value = tensor_argument(name, value)
    if not value.is_floating_point():
        value = value.to(torch.float32)
    return value


def check_finite(name: str, value: Tensor) -> None:
    """Raise a ValueError naming ``name`` if ``value`` holds NaN or infinite entries."""
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"Expected argument `{name}` to be finite, but it holds {bad} NaN or infinite values")


def check_attributions(attributions: Tensor | np.ndarray, name: str = "attributions") -> Tensor:
    """Validate a ``[T, *S]`` attribution stack (at least one target, finite values)."""
    a = as_tensor(name, attributions)
    if a.dim() < 2 or a.shape[0] < 1 or a.numel() == 0:
        raise ValueError(f"Expected argument `{name}` of shape [T, *spatial] with T >= 1, but got shape {tuple(a.shape)}")
    check_finite(name, a)
    return a


def check_image_and_attributions(image: Tensor | np.ndarray, attributions: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Validate a scan ``[C, *S]`` (or ``[1, C, *S]``) and its attributions ``[T, *S]``.

    Returns:
        ``(image [C, *S], attributions [T, *S])``.
    """
    a = check_attributions(attributions)
    x = as_tensor("image", image)
    spatial = tuple(a.shape[1:])
    if x.dim() == a.dim() + 1 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != a.dim() or tuple(x.shape[1:]) != spatial:
        raise ValueError(
            f"Expected argument `attributions` [T, *spatial] to match `image` [C, *spatial] spatially, but got "
            f"attributions of shape {tuple(a.shape)} for an image of shape {tuple(x.shape)}"
        )
    check_finite("image", x)
    return x, a


def zero_targets(attributions: Tensor) -> list[int]:
    """Positions of the targets whose attribution map is all zeros."""
    flat = attributions.reshape(attributions.shape[0], -1)
    return [int(i) for i in torch.nonzero(~flat.ne(0).any(dim=1)).flatten()]


def target_list(targets: Sequence[int] | Tensor, n_attributions: int | None = None) -> list[int]:
    """Class ids as a list of ints; their number must equal the attribution stack's ``T`` when given."""
    t = [int(v) for v in torch.as_tensor(targets).reshape(-1).tolist()]
    if not t or any(v < 0 for v in t):
        raise ValueError(f"Expected argument `targets` to be non-empty non-negative class ids, but got {targets!r}")
    if n_attributions is not None and len(t) != n_attributions:
        raise ValueError(
            f"Expected one target per attribution map: `targets` has {len(t)} entries but `attributions` holds "
            f"{n_attributions} maps"
        )
    return t


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer (``fallback`` for a parameter-free model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return fallback


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no gradients for the block; the model's training flags are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for m, training in modes:
            m.train(training)

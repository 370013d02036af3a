"""Reading weight files without unpickling objects, and naming what does not fit a model.

The one place the toolkit opens a checkpoint or state-dict file: :func:`read_weights_file` (always
``weights_only=True``), :func:`state_dict_mismatch` (the keys and shapes that differ) and
:func:`load_state_dict_checked` (strict loading with that message).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)


#: Why a file that ``torch.load(weights_only=True)`` refuses cannot be used, for messages.
UNREADABLE = ("it is truncated or corrupt, not a torch file, or holds objects other than tensors and plain containers, "
              "which are never unpickled here")


def load_weights_only(path: str | Path, *, map_location: Any = "cpu") -> tuple[Any, str | None]:
    """``(obj, None)`` from ``torch.load(path, weights_only=True)`` (memory-mapped where the format allows),
    or ``(None, "Type: first line of the error")`` when the file cannot be read that way."""
    import torch

    errors = []
    for mmap in (True, False):  # mmap needs the zip format; an old-format file is read whole
        try:
            return torch.load(Path(path), map_location=map_location, weights_only=True, mmap=mmap), None
        except Exception as err:  # noqa: BLE001 - whatever fails, the file cannot be used
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            errors.append(f"{type(err).__name__}: {first}")
    return None, errors[-1]


def read_weights_file(path: str | Path, *, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, memory-mapped where the file format allows it.

    Args:
        path: the file.
        what: how messages name the file (``"checkpoint"``, ``"weights file"``, ``"bundle weights"``).
        map_location: where tensors are loaded to.

    Returns:
        The loaded object (tensors and plain containers only).

    Raises:
        DataError: the file is missing, truncated, not a torch file, or holds pickled objects other
            than tensors and plain containers (never unpickled here); the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist" if not p.exists() else f"{what} {p} is not a file")
    obj, error = load_weights_only(p, map_location=map_location)
    if error is not None:
        raise DataError(f"{what} {p} cannot be loaded with weights_only=True ({error}): {UNREADABLE}")
    return obj


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {str(k): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def state_dict_mismatch(
    theirs: Mapping[str, Any], ours: Mapping[str, Any], *, ignore_prefixes: tuple[str, ...] = (), limit: int = 5
) -> str:
    """What differs between two state dicts (tensors or shapes as values), or ``""`` when they fit.

    Args:
        theirs: the file's state dict.
        ours: the model's ``state_dict()``.
        ignore_prefixes: keys starting with one of these are left out on both sides.
        limit: how many keys of each kind to name.

    Returns:
        e.g. ``"shapes differ: out.weight (3, 8, 1, 1, 1) in the file, (2, 8, 1, 1, 1) in the model; missing
        weights ['head.bias']; unexpected weights ['aux.weight']"``.

    Example:
        >>> import torch
        >>> state_dict_mismatch({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
        'shapes differ: w (2,) in the file, (3,) in the model'
    """
    a = {k: s for k, s in _shapes(theirs).items() if not k.startswith(ignore_prefixes)}
    b = {k: s for k, s in _shapes(ours).items() if not k.startswith(ignore_prefixes)}
    differ = [f"{k} {a[k]} in the file, {b[k]} in the model" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    missing, unexpected = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    parts = []
    if differ:
        parts.append(f"shapes differ: {', '.join(differ[:limit])}" + (f" (+{len(differ) - limit} more)" if len(differ) > limit else ""))
    if missing:
        parts.append(f"missing weights {missing[:limit]}" + (f" (+{len(missing) - limit} more)" if len(missing) > limit else ""))
    if unexpected:
        parts.append(f"unexpected weights {unexpected[:limit]}" + (f" (+{len(unexpected) - limit} more)" if len(unexpected) > limit else ""))
    return "; ".join(parts)


def unwrap_state_dict(obj: Any, *, what: str) -> dict[str, Any]:
    """The state dict inside a loaded weights file: the file itself, or its ``state_dict`` / ``model`` /
    ``network`` entry (Lightning checkpoints, MONAI ``CheckpointSaver`` files).

    Raises:
        DataError: no mapping of names to tensors was found (naming ``what`` and the keys present).
    """
    import torch

    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("state_dict", "model", "network", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    found = sorted(map(str, obj))[:6] if isinstance(obj, Mapping) else type(obj).__name__
    raise DataError(f"{what}: expected a state dict (names -> tensors) or a checkpoint holding one under "
                    f"'state_dict' or 'model', but found {found}")


def _strip_common_prefix(state: Mapping[str, Any], wanted: set[str]) -> dict[str, Any]:
    """``state`` with one leading ``name.`` removed from every key when that makes its keys ``wanted``
    (a Lightning module's ``net.`` or ``model.`` around the network)."""
    firsts = {str(k).split(".", 1)[0] for k in state}
    if len(firsts) == 1 and all("." in str(k) for k in state):
        stripped = {str(k).split(".", 1)[1]: v for k, v in state.items()}
        if set(stripped) == wanted:
            return stripped
    return dict(state)


def load_state_dict_checked(model: Any, state: Mapping[str, Any], *, what: str, expected: str = "the model") -> None:
    """Load ``state`` into ``model`` strictly, or refuse naming the keys and shapes that differ.

    A common leading prefix (``net.``, ``model.``) is stripped when that makes the keys fit.

    Args:
        model: the ``nn.Module``.
        state: its weights.
        what: the file, as messages name it.
        expected: what the weights should be for (``"the model of factory pkg.mod:fn"``).

    Raises:
        DataError: naming ``what``, ``expected`` and the mismatching keys and shapes.
    """
    ours = model.state_dict()
    state = _strip_common_prefix(state, set(ours))
    detail = state_dict_mismatch(state, ours)
    if detail:
        raise DataError(f"{what}: expected the weights of {expected}, but they do not fit: {detail}")
    model.load_state_dict(state, strict=True)

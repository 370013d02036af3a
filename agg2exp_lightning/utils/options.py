"""Validated arguments with messages that name the argument, the value and what was expected.

:func:`look_up_option` follows MONAI's ``monai.utils.module.look_up_option``: a choice from a list (or a
mapping's keys), or a ``ValueError`` listing the valid choices and the nearest spelling.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def nearest(value: Any, valid: Iterable[Any], *, cutoff: float = 0.5) -> str | None:
    """The valid choice (as text) whose spelling is nearest to ``value``, or None when none is near."""
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(value: Any, valid: Iterable[Any], *, cutoff: float = 0.5) -> str:
    """``"; did you mean 'x'?"`` for the valid choice nearest to ``value``, or ``""`` when none is near."""
    close = nearest(value, valid, cutoff=cutoff)
    return f"; did you mean {close!r}?" if close is not None else ""


def look_up_option(name: str, value: Any, valid: Iterable[T] | Mapping[T, Any], *, normalise: bool = False) -> T:
    """``value`` if it is one of ``valid``, else a ValueError naming ``name``, the choices and the nearest one.

    Args:
        name: the argument's name as the user wrote it (``"protocol"``, ``"--method"``).
        value: what the user gave.
        valid: the allowed values (a mapping's keys are the allowed values).
        normalise: compare strings case-insensitively with ``-`` and spaces read as ``_``; the
            matching valid value is returned.

    Returns:
        The matching element of ``valid``.

    Raises:
        ValueError: ``value`` is not one of ``valid``.

    Example:
        >>> look_up_option("protocol", "paper", ["paper", "corrected"])
        'paper'
    """
    choices = list(valid.keys() if isinstance(valid, Mapping) else valid)
    if value in choices:
        return value
    if normalise and isinstance(value, str):
        key = value.strip().lower().replace("-", "_").replace(" ", "_")
        for c in choices:
            if isinstance(c, str) and c.lower().replace("-", "_").replace(" ", "_") == key:
                return c
    raise ValueError(f"Expected `{name}` to be one of {choices}, but got {value!r}{did_you_mean(value, choices)}")


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``name`` when it is not an integer >= ``minimum``.

    Example:
        >>> positive_int("batch_size", 0)
        Traceback (most recent call last):
        ValueError: Expected argument `batch_size` to be a positive integer, but got 0
    """
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"Expected argument `{name}` to be {expected}, but got {value!r}")
    return int(value)


def nonnegative_float(name: str, value: Any) -> float:
    """``value`` as a finite float >= 0, or a ValueError naming ``name``."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"Expected argument `{name}` to be a finite number >= 0, but got {value!r}")
    return float(value)

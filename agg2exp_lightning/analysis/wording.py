"""Plain-word phrases for numbers a person reads: a value against its reference, with unit and reference named.

One home for the habit "every number in a sentence carries its unit and its reference in words": the
worklist's reasons, and any other evidence family that explains a scan against a reference cohort
(a share of attribution mass, a predicted volume, a count), are written by :func:`describe_against_reference`.
"""
from __future__ import annotations

import math

#: The unit that marks a share (a fraction in [0, 1]): its difference is told in percentage points.
SHARE = "share"
#: Differences below these are "unchanged": half the finest digit a difference is printed with.
_MIN_POINTS = 0.005  # percentage points of a share
_MIN_PERCENT = 0.5  # percent of the reference median


def _number(x: float) -> str:
    """A quantity as a person writes it: whole from 100 on, else 3 significant digits (``412``, ``38.2``, ``0.0125``)."""
    return f"{x:.0f}" if abs(x) >= 100 and abs(x) < 1e7 else f"{x:.3g}"


def _share_text(x: float) -> str:
    """A share with 2 decimals, or 2 significant digits when it is below 0.01 but not 0 (never a bare ``0.00``)."""
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2g}"


def _decimals(amount: float) -> int:
    """Decimals a difference of ``amount`` (points or percent) is printed with: 0 from 10 on, 1 from 1 on, else 2."""
    return 0 if amount >= 9.5 else 1 if amount >= 0.95 else 2


def is_unchanged(unit: str, value: float, reference_median: float) -> bool:
    """Whether :func:`describe_against_reference` would call the value unchanged (its difference prints as 0).

    Args:
        unit: :data:`SHARE` for a fraction in [0, 1], else the quantity's unit (``"ml"``, ``""`` for a count).
        value: the scan's value.
        reference_median: the reference scans' median.
    """
    diff = float(value) - float(reference_median)
    if unit == SHARE:
        return abs(100.0 * diff) < _MIN_POINTS
    if reference_median == 0:
        return diff == 0
    return abs(100.0 * diff / abs(float(reference_median))) < _MIN_PERCENT


def describe_against_reference(name: str, unit: str, value: float, reference_median: float) -> str:
    """One phrase: the value, the reference median, and how far apart they are, in words with units.

    A share (``unit == "share"``, a fraction in [0, 1]) differs in percentage points; any other
    quantity differs in percent of the reference median (``unit`` is printed after both numbers).
    A difference that would print as 0 is called ``unchanged``, never "up 0 %"; the shares carry two
    more decimals than their difference in points, so the printed numbers subtract to the printed difference.

    Args:
        name: what the number is, e.g. ``"background share"`` or ``"heart volume"``.
        unit: :data:`SHARE`, or the quantity's unit (``"ml"``, ``"mm"``; ``""`` for a plain number).
        value: the scan's value.
        reference_median: the reference scans' median of the same quantity.

    Returns:
        e.g. ``"background share 0.67, reference median 0.86: 19 points lower"`` or
        ``"heart volume 412 ml, reference median 665 ml: 38 % lower"``.

    Raises:
        ValueError: a value or the median is not finite.

    Example:
        >>> describe_against_reference("background share", "share", 0.67, 0.86)
        'background share 0.67, reference median 0.86: 19 points lower'
        >>> describe_against_reference("heart volume", "ml", 412.0, 665.0)
        'heart volume 412 ml, reference median 665 ml: 38 % lower'
        >>> describe_against_reference("sternum share", "share", 0.0036, 0.0013)
        'sternum share 0.0036, reference median 0.0013: 0.23 points higher'
    """
    value, median = float(value), float(reference_median)
    if not (math.isfinite(value) and math.isfinite(median)):
        raise ValueError(f"Expected finite numbers for {name!r}, got value {value!r} and reference median {median!r}")
    unchanged = is_unchanged(unit, value, median)
    if unit == SHARE:
        points = abs(100.0 * (value - median))
        if unchanged:
            return f"{name} {_share_text(value)}, reference median {_share_text(median)}: unchanged"
        # shares with two more decimals than the points, so that the printed numbers subtract to the printed difference
        d = _decimals(points)
        return (f"{name} {value:.{d + 2}f}, reference median {median:.{d + 2}f}: "
                f"{points:.{d}f} points {'higher' if value > median else 'lower'}")
    suffix = f" {unit}" if unit else ""
    head = f"{name} {_number(value)}{suffix}, reference median {_number(median)}{suffix}"
    if unchanged:
        return f"{head}: unchanged"
    direction = "higher" if value > median else "lower"
    if median == 0:
        return f"{head}: {direction}"
    percent = abs(100.0 * (value - median) / abs(median))
    return f"{head}: {percent:.{_decimals(percent)}f} % {direction}"

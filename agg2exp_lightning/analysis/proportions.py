"""A rate with its 95 % interval: the one helper the benchmarks and docs use for every rate.

The Wilson score interval (Wilson 1927) keeps a sensible width at 0 or ``n`` successes and small
``n``, where the normal (Wald) interval collapses to a point: 0 of 112 is "0 % (0-3.3 %)", not
"0 % (0-0 %)".
"""
from __future__ import annotations

import math

from scipy.stats import norm

__all__ = ["format_rate", "wilson_interval"]


def wilson_interval(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n``.

    Args:
        k: successes, ``0 <= k <= n``.
        n: trials, ``n >= 1``.
        level: coverage of the interval, in ``(0, 1)``.

    Returns:
        ``(low, high)`` within ``[0, 1]``.

    Raises:
        ValueError: ``n < 1``, ``k`` outside ``[0, n]`` or ``level`` outside ``(0, 1)``.

    Example:
        >>> [round(v, 4) for v in wilson_interval(7, 200)]
        [0.0171, 0.0705]
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"Expected `n` to be a positive integer (trials), got {n!r}")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= n:
        raise ValueError(f"Expected `k` to be an integer in [0, {n}] (successes), got {k!r}")
    if not 0 < level < 1:
        raise ValueError(f"Expected `level` in (0, 1), got {level!r}")
    z = float(norm.ppf((1 + level) / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def format_rate(k: int, n: int, *, level: float = 0.95, digits: int = 1) -> str:
    """``"3.5 % (95 % CI 1.7-7.1 %; 7 of 200)"``: the rate, its Wilson interval and the counts."""
    low, high = wilson_interval(k, n, level=level)
    pct = f"{{:.{digits}f}}"
    return (f"{pct.format(100 * k / n)} % ({round(100 * level)} % CI {pct.format(100 * low)}-{pct.format(100 * high)} %; "
            f"{k} of {n})")

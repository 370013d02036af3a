"""Exceptions raised for bad input. They subclass ValueError so callers can catch either."""
from __future__ import annotations


class DataError(ValueError):
    """A file, subject or table does not hold what the toolkit expects.

    The message always names the offending file or subject and what was expected.
    """

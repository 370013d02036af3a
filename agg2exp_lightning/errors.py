"""Exceptions raised for bad input. They subclass ValueError so callers can catch either."""
from __future__ import annotations


class DataError(ValueError):
    """A file, subject or table does not hold what the toolkit expects.

    The message always names the offending file or subject and what was expected.
    """


def find_data_error(err: BaseException) -> DataError | None:
    """The first :class:`DataError` in ``err``'s chain of causes (MONAI and Lightning wrap errors), or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, DataError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None

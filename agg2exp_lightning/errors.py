"""Exceptions raised for bad input, and the walk along an exception's chain of causes.

The exceptions subclass ValueError so callers can catch either.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator


class DataError(ValueError):
    """A file, subject or table does not hold what the toolkit expects.

    The message always names the offending file or subject and what was expected.
    """


class NonFiniteError(ValueError):
    """The explanation engine met NaN or infinite values: in the image, the model's logits or the attributions.

    A diverging model produces them; a caller that explains while training (the monitors) catches this
    type to report the scan and go on, while any other error still stops it. ``what`` names where
    the values were found (``"image"``, ``"logits"``, ``"attributions"``).
    """

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what

    def __reduce__(self):  # picklable across processes (a DataLoader worker, a gather)
        return (_non_finite, (str(self), self.what))


def _non_finite(message: str, what: str) -> NonFiniteError:
    return NonFiniteError(message, what=what)


def cause_chain(err: BaseException, *, implicit: bool = True) -> Iterator[BaseException]:
    """``err``, then its causes (MONAI, Lightning and the data loader wrap errors), each once.

    Args:
        err: the caught exception.
        implicit: also follow ``__context__`` (an error raised while handling another) where
            ``__cause__`` (``raise ... from``) is not set.

    Example:
        >>> try:
        ...     try:
        ...         raise DataError("scan s1: no label")
        ...     except DataError as inner:
        ...         raise RuntimeError("transform failed") from inner
        ... except RuntimeError as outer:
        ...     [type(e).__name__ for e in cause_chain(outer)]
        ['RuntimeError', 'DataError']
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or (current.__context__ if implicit else None)


def find_in_chain(err: BaseException, match: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in :func:`cause_chain` for which ``match`` is true, or None."""
    return next((e for e in cause_chain(err) if match(e)), None)


def find_data_error(err: BaseException) -> DataError | None:
    """The first :class:`DataError` in ``err``'s chain of causes (MONAI and Lightning wrap errors), or None."""
    found = find_in_chain(err, lambda e: isinstance(e, DataError))
    return found if isinstance(found, DataError) else None


def root_cause(err: BaseException) -> BaseException:
    """The innermost explicit cause (``raise ... from``) of ``err``: what a wrapper such as MONAI's transform
    error hides."""
    *_, last = cause_chain(err, implicit=False)
    return last

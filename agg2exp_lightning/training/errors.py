"""The training command's error type and the file-system failures it names instead of a traceback."""
from __future__ import annotations

import errno

from agg2exp_lightning.errors import find_in_chain

__all__ = ["DISK_ERRNOS", "TrainingError", "disk_error_in_chain", "errno_text"]

#: File-system errors that stop a run for a reason outside the program: a full, read-only or failing disk.
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)}
)


class TrainingError(ValueError):
    """A configuration, checkpoint or run folder that training cannot use; the message names it and what
    was expected. ``agg2exp-train`` prints it without a traceback and exits with status 2."""


def errno_text(err: OSError) -> str:
    """The operating system's reason with its symbolic code, e.g. ``No space left on device [ENOSPC]``."""
    code = errno.errorcode.get(err.errno or 0, "")
    return f"{err.strerror or err}" + (f" [{code}]" if code else "")


def disk_error_in_chain(err: BaseException) -> OSError | None:
    """The first disk failure (:data:`DISK_ERRNOS`) in ``err``'s chain of causes, or None."""
    found = find_in_chain(err, lambda e: isinstance(e, OSError) and e.errno in DISK_ERRNOS)
    return found if isinstance(found, OSError) else None

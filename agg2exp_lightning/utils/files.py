"""Atomic file writes and fingerprints: the one home for writing a file a reader may see half-done.

Every write goes to a temporary file beside the target (same file system, so the rename is atomic),
is flushed and synced to disk, then renamed over the target with :func:`os.replace`; the folder is
synced too so the rename survives a power cut. A kill at any moment leaves the old file or the new
one, never a truncated one, and a failed write leaves no temporary file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: Names of the temporary files of :func:`atomic_write`: ``.<name>.<pid>.<8 hex>.tmp``.
TEMPORARY_PATTERN = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary file object, then move the result onto ``path`` atomically.

    Args:
        path: the target file; its folder is created if missing.
        write: fills the open binary file (e.g. ``lambda f: torch.save(obj, f)``,
            ``lambda f: frame.to_csv(f, index=False)``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the file cannot be written (a full disk, a read-only folder); ``path`` keeps its
            earlier content and no temporary file is left.

    Example:
        >>> atomic_write("table.csv", lambda f: f.write(b"a,b\\n1,2\\n"))  # doctest: +SKIP
    """
    target = Path(str(path).removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # default permissions (umask), unlike mkstemp's 0600
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON (NaN refused: convert it to ``None`` first), indented, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def remove_temporaries(folder: str | os.PathLike, *, older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporary files that killed :func:`atomic_write` calls left in ``folder`` (not recursive).

    Args:
        folder: the folder to clean (a missing folder holds nothing).
        older_than_s: keep temporaries modified less than this many seconds ago (a write that may
            still be running in another process).

    Returns:
        The removed paths. Only names of :data:`TEMPORARY_PATTERN` are touched.
    """
    removed = []
    now = time.time()
    for tmp in Path(folder).glob(".*.tmp"):
        if not TEMPORARY_PATTERN.fullmatch(tmp.name):
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if now - tmp.stat().st_mtime >= older_than_s:
                tmp.unlink()
                log.info("removed %s, left by an interrupted write", tmp)
                removed.append(tmp)
    return removed


def file_sha256(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(config: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a JSON-serialisable configuration (key order does not matter; other values as ``str``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()

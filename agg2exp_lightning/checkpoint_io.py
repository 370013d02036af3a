"""Checkpoints written atomically in their own folder: a kill at any moment leaves the old file or the new one.

Lightning's default writer (``lightning.fabric.utilities.cloud_io._atomic_save``) goes through an fsspec
transaction whose temporary file lies in the system temp folder; when that is another file system than the
run folder (``/tmp`` on tmpfs, a run folder on a network disk) the final move is a copy, and a kill during
the copy leaves a truncated ``last.ckpt``. Here the temporary file lies beside the target, is synced to
disk, then renamed over it (``os.replace``, atomic within one file system).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

#: Prefix and suffix of the temporary files (``.last.ckpt.<random>.partial``); a killed write leaves one.
PARTIAL_SUFFIX = ".partial"


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a synced temporary file in ``path``'s folder and an atomic rename."""
    target = Path(str(path).removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_partials(folder: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Delete temporary files that killed writes left in ``folder``; returns what was removed."""
    removed = []
    now = time.time()
    for p in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                removed.append(p)
    if removed:
        log.info("removed %d partial checkpoint file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic within the checkpoint's own folder.

    Remote paths (``s3://`` ...) keep Lightning's writer.

    Example:
        >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()])
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_torch_save(checkpoint, path)

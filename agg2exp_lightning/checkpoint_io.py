"""Checkpoints written atomically in their own folder: a kill at any moment leaves the old file or the new one.

Lightning's default writer (``lightning.fabric.utilities.cloud_io._atomic_save``) goes through an fsspec
transaction whose temporary file lies in the system temp folder; when that is another file system than the
run folder (``/tmp`` on tmpfs, a run folder on a network disk) the final move is a copy, and a kill during
the copy leaves a truncated ``last.ckpt``. Here the temporary file lies beside the target, is synced to
disk, then renamed over it (``os.replace``, atomic within one file system).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from agg2exp_lightning.utils.files import atomic_write, remove_temporaries

log = logging.getLogger(__name__)


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a synced temporary file in ``path``'s folder and an atomic rename
    (:func:`~agg2exp_lightning.utils.files.atomic_write`; a killed write leaves ``.<name>.<pid>.<hex>.tmp``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_partials(folder: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files that killed checkpoint writes left in ``folder``; returns what was removed.

    Only names of :data:`~agg2exp_lightning.utils.files.TEMPORARY_PATTERN` are touched; files modified less
    than ``older_than_s`` seconds ago are kept (a write that may still be running).
    """
    removed = remove_temporaries(folder, older_than_s=older_than_s)
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

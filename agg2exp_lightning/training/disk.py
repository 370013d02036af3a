"""Probing the folders a run writes to, so a read-only or full disk is named before the first save."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from agg2exp_lightning.training.errors import TrainingError, errno_text

__all__ = ["check_writable", "output_folders"]


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed, then write, sync and remove a small probe file in it.

    Raises:
        TrainingError: naming the folder and the operating system's reason (read-only, full, no permission).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise TrainingError(
            f"{what} {folder} is not writable: {errno_text(err)}. Free space or make it writable, or choose "
            "another folder (--trainer.default_root_dir)."
        ) from err


def output_folders(trainer: Any, run_dir: Path) -> list[tuple[Path, str]]:
    """The local folders a run writes to (run folder, checkpoint folders, loggers' folders), each once."""
    folders = [(run_dir, "the run folder (--trainer.default_root_dir)")]
    folders += [(Path(cb.dirpath), "the checkpoint folder") for cb in trainer.checkpoint_callbacks if cb.dirpath]
    for logger in trainer.loggers:
        save_dir = getattr(logger, "save_dir", None)
        if save_dir and "://" not in str(save_dir):
            folders.append((Path(save_dir), f"the {type(logger).__name__}'s folder"))
    seen, out = set(), []
    for folder, what in folders:
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            out.append((folder, what))
    return out

"""Where a training run's files go: one answer for the monitors, the training command and its report.

Both :mod:`agg2exp_lightning.callbacks` and :mod:`agg2exp_lightning.training` import from here, so
neither reaches into the other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["log_folder", "run_folder", "wandb_loggers"]


def log_folder(trainer: Any) -> str | None:
    """The Trainer's ``log_dir``, worked out on this rank alone.

    ``Trainer.log_dir`` broadcasts from rank zero, a collective under distributed training: code that runs on
    rank zero only (writing files, printing) would wait there for the other ranks forever. This is the same
    rule without the broadcast: the first logger's ``log_dir`` (TensorBoard, CSV) or ``save_dir`` (others),
    else ``default_root_dir``.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not trainer.loggers:
        return trainer.default_root_dir
    first = trainer.loggers[0]
    return first.log_dir if isinstance(first, (TensorBoardLogger, CSVLogger)) else first.save_dir


def run_folder(trainer: Any) -> Path:
    """``<log_dir or default_root_dir>/agg2exp``: the folder of the monitors' tables and figures.

    Safe on one rank alone (see :func:`log_folder`).

    Args:
        trainer: a Lightning ``Trainer``.

    Returns:
        The folder (not created here).
    """
    return Path(log_folder(trainer) or trainer.default_root_dir) / "agg2exp"


def wandb_loggers(trainer: Any) -> list:
    """The trainer's Weights & Biases loggers (an empty list without any)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

"""Where a training run's files go: one answer for the monitors, the training command and its report.

Both :mod:`agg2exp_lightning.callbacks` and :mod:`agg2exp_lightning.training` import from here, so
neither reaches into the other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run_folder", "wandb_loggers"]


def run_folder(trainer: Any) -> Path:
    """``<log_dir or default_root_dir>/agg2exp``: the folder of the monitors' tables and figures.

    Args:
        trainer: a Lightning ``Trainer``.

    Returns:
        The folder (not created here).
    """
    base = trainer.log_dir or trainer.default_root_dir
    return Path(base) / "agg2exp"


def wandb_loggers(trainer: Any) -> list:
    """The trainer's Weights & Biases loggers (an empty list without any)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

"""Lightning plumbing shared by the monitors: where files go, logging, gathering across ranks."""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from agg2exp_lightning.utils.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


def run_folder(trainer: pl.Trainer) -> Path:
    """``<run>/agg2exp``: the folder for the monitors' tables and figures."""
    base = trainer.log_dir or trainer.default_root_dir
    return Path(base) / "agg2exp"


def wandb_loggers(trainer: pl.Trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Scalars through every logger, at the current global step (rank zero only)."""
    if not trainer.is_global_zero or not metrics:
        return
    clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}  # drop NaN
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=trainer.global_step)


def log_figure(trainer: pl.Trainer, key: str, fig: Any) -> Path | None:
    """Save a matplotlib figure as PNG in the run folder and, with W&B, log it as an image."""
    import matplotlib.pyplot as plt

    if not trainer.is_global_zero:
        plt.close(fig)
        return None
    folder = run_folder(trainer) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    for logger in wandb_loggers(trainer):
        try:
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
        except Exception as err:  # never let a logging failure kill training
            log.warning("could not log image %s to W&B: %s", key, err)
    return path


def log_table(trainer: pl.Trainer, key: str, frame: Any) -> Path | None:
    """Save a DataFrame as CSV in the run folder and, with W&B, log it as a ``wandb.Table``."""
    if not trainer.is_global_zero:
        return None
    folder = run_folder(trainer) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.csv"
    atomic_write_text(path, frame.to_csv(index=True))
    for logger in wandb_loggers(trainer):
        try:
            logger.log_table(key=key, dataframe=frame.reset_index(), step=trainer.global_step)
        except Exception as err:
            log.warning("could not log table %s to W&B: %s", key, err)
    return path


def gather_objects(obj: Any) -> list[Any]:
    """All ranks' ``obj`` in rank order (a one-element list without distributed training)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj: Any) -> Any:
    """Rank zero's ``obj`` on every rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj

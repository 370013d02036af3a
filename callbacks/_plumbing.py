"""Lightning plumbing shared by the monitors: where files go, logging, gathering across ranks."""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from agg2exp_lightning.run_files import run_folder, wandb_loggers  # noqa: F401 - re-exported for the monitors
from agg2exp_lightning.utils.distributed import gather_objects  # noqa: F401 - re-exported for the monitors
from agg2exp_lightning.utils.files import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


def log_scalars(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Scalars through every logger, at the current global step with the current ``epoch`` (rank zero only)."""
    if not trainer.is_global_zero or not metrics:
        return
    clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}  # drop NaN
    clean.setdefault("epoch", float(trainer.current_epoch))
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=trainer.global_step)


def _log_to_wandb(trainer: pl.Trainer, key: str, make: Any) -> None:
    """``{key: make(wandb), "epoch": current epoch}`` to every W&B logger at the global step (epoch in the same
    call, so W&B plots it over the epoch it belongs to, not the last one logged)."""
    loggers = wandb_loggers(trainer)
    if not loggers:
        return
    try:
        import wandb

        value = make(wandb)
    except Exception as err:  # never let a logging failure kill training
        log.warning("could not prepare %s for W&B: %s", key, err)
        return
    for logger in loggers:
        try:
            logger.log_metrics({key: value, "epoch": trainer.current_epoch}, step=trainer.global_step)
        except Exception as err:
            log.warning("could not log %s to W&B: %s", key, err)


def log_figure(trainer: pl.Trainer, key: str, fig: Any) -> Path | None:
    """Save a matplotlib figure as PNG in the run folder and, with W&B, log it as an image."""
    import matplotlib.pyplot as plt

    if not trainer.is_global_zero:
        plt.close(fig)
        return None
    folder = run_folder(trainer) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png"
    from agg2exp_lightning.analysis.figures import settle_layout

    buf = io.BytesIO()
    settle_layout(fig).savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    _log_to_wandb(trainer, key, lambda wandb: [wandb.Image(str(path))])
    return path


def log_table(trainer: pl.Trainer, key: str, frame: Any) -> Path | None:
    """Save a DataFrame as CSV in the run folder and, with W&B, log it as a ``wandb.Table``."""
    if not trainer.is_global_zero:
        return None
    folder = run_folder(trainer) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.csv"
    atomic_write_text(path, frame.to_csv(index=True))
    _log_to_wandb(trainer, key, lambda wandb: wandb.Table(dataframe=frame.reset_index()))
    return path


def broadcast_object(obj: Any) -> Any:
    """Rank zero's ``obj`` on every rank."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def log_masked_images(trainer: pl.Trainer, key: str, images: list[Any], masks: list[dict[str, Any]], captions: list[str]) -> None:
    """Log slices as ``wandb.Image`` with masks the W&B UI can toggle (each logger that is a W&B one, rank zero).

    Args:
        trainer: the Trainer (its W&B loggers and global step).
        key: the W&B key.
        images: 2D intensity slices (scaled to [0, 255] per slice here).
        masks: per image ``{mask name: {"mask_data": 2D int array, "class_labels": {id: name}}}``.
        captions: one caption per image.
    """
    import numpy as np

    if not trainer.is_global_zero or not images:
        return
    scaled, grown = [], []
    for image, mask in zip(images, masks):
        a = np.asarray(image, dtype=np.float32)
        low, high = float(a.min()), float(a.max())
        k = overlay_scale(a.shape)
        scaled.append(_repeat(((a - low) / (high - low) * 255 if high > low else np.zeros_like(a)).astype(np.uint8), k))
        grown.append({name: {**m, "mask_data": _repeat(np.asarray(m["mask_data"]), k)} for name, m in mask.items()})
    _log_to_wandb(trainer, key, lambda wandb: [wandb.Image(a, masks=m, caption=c) for a, m, c in zip(scaled, grown, captions)])


#: Shortest side (pixels) of a W&B mask overlay: a 52 x 63 slice is a stamp in the W&B panel, and its mask
#: outlines cannot be told apart; slices are enlarged by a whole factor (nearest neighbour: no new values).
MIN_OVERLAY_SIDE = 256


def overlay_scale(shape: tuple[int, ...], min_side: int = MIN_OVERLAY_SIDE) -> int:
    """The whole factor that brings the shorter side of a 2D ``shape`` to at least ``min_side`` (1 if it is already)."""
    return max(1, -(-min_side // max(1, min(shape[:2]))))


def _repeat(a: Any, k: int) -> Any:
    """``a`` with every pixel repeated ``k`` x ``k`` times (nearest-neighbour enlargement)."""
    return a if k == 1 else a.repeat(k, axis=0).repeat(k, axis=1)

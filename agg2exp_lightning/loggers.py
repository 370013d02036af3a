"""Weights & Biases logging that never asks for a login: offline unless the user says otherwise."""
from __future__ import annotations

import logging
import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """The W&B mode in force: ``WANDB_MODE`` if set (online, offline, disabled), else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower() or "offline"
    if mode == "dryrun":
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"Expected WANDB_MODE to be one of online, offline, disabled, but got {mode!r}")
    return mode


class OfflineFirstWandbLogger(WandbLogger):
    """A :class:`~lightning.pytorch.loggers.WandbLogger` that is offline by default.

    ``WANDB_MODE=online`` sends the run to W&B (with the user's own credentials); ``disabled`` turns
    W&B into a no-op. An offline run lands in ``<save_dir>/wandb/`` and ``wandb sync`` uploads it later.

    Args:
        save_dir: folder for the run's files.
        project: W&B project name.
        name: run name.
        **kwargs: passed to :class:`WandbLogger`.
    """

    def __init__(self, save_dir: str = "runs", project: str = "agg2exp-lightning", name: str | None = None, **kwargs: Any) -> None:
        mode = wandb_mode()
        os.makedirs(save_dir, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        kwargs.setdefault("settings", None)
        if kwargs["settings"] is None:
            kwargs.pop("settings")
        super().__init__(save_dir=save_dir, project=project, name=name, offline=mode != "online", mode=mode, **kwargs)
        log.info("W&B mode: %s (set WANDB_MODE=online to upload)", mode)

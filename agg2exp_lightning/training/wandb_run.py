"""Which W&B run a training logs to: a resumed training continues the run it started, as a W&B user expects.

``fit`` records the id of each W&B run it starts in ``<run>/wandb_run.json`` (beside ``checkpoints/``), as soon
as the run is created. Started again on the same run folder and continuing from a checkpoint, it passes that id
back to the logger (``wandb.init(id=..., resume="allow")``, :meth:`OfflineFirstWandbLogger.continue_run`):

- online, W&B appends to the run;
- offline, the new ``offline-run-<time>-<id>`` folder shares the id, and ``wandb sync <run>/wandb/offline-run-*``
  uploads the folders of one id in the order they started, as one run (wandb 0.31; older versions did not join
  them, wandb/wandb#3841).

A run killed before wandb's first write (wandb writes its log every 15 s, and a SIGKILL of the training takes
wandb's service with it) leaves an offline folder whose log holds nothing, which ``wandb sync`` would upload as an
empty run: such folders of the recorded run are removed before the next start (:func:`agg2exp_lightning.wandb_files.offline_run_is_empty`). Any folder that holds a record
is kept. ``WANDB_MODE=disabled`` writes and removes nothing; ``validate``, ``test`` and ``predict`` neither read nor
write the record.
"""
from __future__ import annotations

import glob
import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["RUN_RECORD", "remove_empty_offline_runs", "start_wandb_runs"]

#: The file in the run folder holding, per W&B project, the id of the run the training logs to.
RUN_RECORD = "wandb_run.json"


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:  # a damaged record costs the continuity of the W&B run, not the training
        log.warning("could not read %s (%s): the training logs to a new W&B run", path, err)
        return {}
    return record if isinstance(record, dict) else {}


def remove_empty_offline_runs(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """Remove the offline folders ``offline-run-*-<run_id>`` of ``wandb_dir`` whose log holds nothing.

    Args:
        wandb_dir: the ``wandb`` folder the run was written to.
        run_id: the W&B run id; folders of other runs are never touched.

    Returns:
        The folders removed.
    """
    from agg2exp_lightning.wandb_files import offline_run_is_empty

    removed = []
    for folder in sorted(Path(wandb_dir).glob(f"offline-run-*-{glob.escape(run_id)}")):
        if folder.is_dir() and not folder.is_symlink() and offline_run_is_empty(folder):
            shutil.rmtree(folder)
            removed.append(folder)
            log.info("removed %s: a W&B run killed before its first write holds nothing to sync", folder)
    return removed


def start_wandb_runs(trainer: Any, run_dir: Path, *, resuming: bool) -> None:
    """Start the W&B run of each :class:`OfflineFirstWandbLogger` of ``trainer`` and record its id in ``run_dir``.

    Call it just before ``trainer.fit``. Empty offline folders of the recorded runs are removed first; then, when
    ``resuming`` (the training continues from a checkpoint), each logger continues its recorded run, unless its
    id was set in the configuration (``id``/``version``: that one is kept); otherwise a new run starts. The runs
    start here rather than at the Trainer's set-up, so that the id is on disk before the first step.

    Args:
        trainer: the Trainer, before ``fit``.
        run_dir: the run folder (``--trainer.default_root_dir``).
        resuming: whether ``fit`` continues from a checkpoint.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from agg2exp_lightning.loggers import OfflineFirstWandbLogger
    from agg2exp_lightning.utils import atomic_write_json

    if rank_zero_only.rank != 0:  # the loggers' runs exist on rank 0 only
        return
    loggers = [lg for lg in trainer.loggers if isinstance(lg, OfflineFirstWandbLogger) and lg.mode != "disabled"]
    if not loggers:
        return
    import wandb

    path = Path(run_dir) / RUN_RECORD
    record = _read_record(path)
    for logger in loggers:
        project = str(logger.name)
        earlier = record.get(project) if isinstance(record.get(project), dict) else {}
        run_id, folder = earlier.get("id"), earlier.get("folder")
        # a run in progress in this process (which the logger would attach to) may not have written its log yet
        if isinstance(run_id, str) and run_id and isinstance(folder, str) and wandb.run is None:
            remove_empty_offline_runs(folder, run_id)
        if resuming and isinstance(run_id, str) and run_id and logger.version is None:
            logger.continue_run(run_id)
            log.info("continuing the W&B run %s (recorded in %s)", run_id, path)
        run = logger.experiment
        sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
        record[project] = {"id": str(run.id), "folder": str(Path(sync_dir).parent) if sync_dir else None}
    atomic_write_json(path, record)

"""Weights & Biases logging that never asks for a login: offline unless the user says otherwise.

What a W&B user expects from a training run, set up here:

- ``epoch`` is the x-axis of the epoch-level values (``val/*``, ``train/nonfinite_loss_steps`` and the monitors'
  ``agg2exp/*``; W&B's ``define_metric``), the global step stays the axis of step-level values;
- the best validation Dice is in the run summary (``val/mean_dice_fg`` and each ``val/dice/<class>``
  with ``max`` and ``last``);
- the full resolved configuration (trainer, callbacks, data, model, as LightningCLI resolved it) is the
  run's config, through :class:`SaveConfigToWandb`, once: the module's hyper-parameters are not written again
  at the top level;
- ``val/loss`` beside the Dice; after ``fit`` the best checkpoint's validation goes into the summary
  (``best/*``) and a per-class ``best/dice_table`` (:func:`log_best_validation`), not as an extra point on
  the ``val/*`` curves one epoch after the last;
- a killed training started again continues its W&B run rather than starting another, and leaves no empty
  offline run (:meth:`OfflineFirstWandbLogger.continue_run`, used by
  :mod:`agg2exp_lightning.training.wandb_run`);
- checkpoints become artifacts with ``log_model`` (``True``: at the end, ``"all"``: every checkpoint), as
  in Lightning's :class:`~lightning.pytorch.loggers.WandbLogger`, offline too (``wandb sync`` uploads them); an audit of such a checkpoint names it
  as its input (:func:`agg2exp_lightning.audit.wandb_logging.log_audit_to_wandb`).
"""
from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)

__all__ = ["BEST_METRICS", "EPOCH_METRICS", "OfflineFirstWandbLogger", "SaveConfigToWandb", "define_epoch_metrics", "log_best_validation",
           "resolved_config", "wandb_mode"]

#: Keys (W&B globs) whose x-axis is ``epoch``.
EPOCH_METRICS: tuple[str, ...] = ("val/*", "agg2exp/*", "train/nonfinite_loss_steps")
#: Keys (``fnmatch`` patterns) whose best value (``max``) and last value go into the run summary.
BEST_METRICS: tuple[str, ...] = ("val/mean_dice_fg", "val/dice/*")


def wandb_mode() -> str:
    """The W&B mode in force: ``WANDB_MODE`` if set (online, offline, disabled), else ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower() or "offline"
    if mode == "dryrun":
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"Expected WANDB_MODE to be one of online, offline, disabled, but got {mode!r}")
    return mode


def define_epoch_metrics(run: Any, epoch_metrics: Sequence[str] = EPOCH_METRICS, best_metrics: Sequence[str] = ()) -> None:
    """``epoch`` as the step metric of ``epoch_metrics`` (W&B globs: a ``*`` suffix), ``max``/``last``
    summaries for the exact keys ``best_metrics``.

    A value logged without ``epoch`` in the same call takes the last logged epoch (W&B's ``step_sync``).
    W&B applies summaries to exact keys only: :class:`OfflineFirstWandbLogger` defines each key matching
    :data:`BEST_METRICS` when it is first logged.
    """
    run.define_metric("epoch")
    for key in epoch_metrics:
        run.define_metric(key, step_metric="epoch")
    for key in best_metrics:
        run.define_metric(key, step_metric="epoch", summary="max,last")


class OfflineFirstWandbLogger(WandbLogger):
    """A :class:`~lightning.pytorch.loggers.WandbLogger` that is offline by default.

    ``WANDB_MODE=online`` sends the run to W&B (with the user's own credentials); ``disabled`` turns
    W&B into a no-op. An offline run lands in ``<save_dir>/wandb/`` and ``wandb sync`` uploads it later.
    Epoch-level values are plotted over ``epoch`` and the best validation Dice is in the summary
    (:func:`define_epoch_metrics`).

    Args:
        save_dir: folder for the run's files.
        project: W&B project name.
        name: run name.
        epoch_metrics: keys (globs) plotted over ``epoch``.
        best_metrics: keys (``fnmatch`` patterns) whose ``max`` and ``last`` go into the summary.
        **kwargs: passed to :class:`WandbLogger` (e.g. ``log_model="all"`` to keep every checkpoint as an
            artifact, ``tags``, ``group``).

    Example:
        >>> trainer = pl.Trainer(logger=OfflineFirstWandbLogger("runs", log_model=True))  # doctest: +SKIP
    """

    def __init__(self, save_dir: str = "runs", project: str = "agg2exp-lightning", name: str | None = None,
                 epoch_metrics: Sequence[str] = EPOCH_METRICS, best_metrics: Sequence[str] = BEST_METRICS, **kwargs: Any) -> None:
        mode = wandb_mode()
        os.makedirs(save_dir, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        kwargs.setdefault("settings", None)
        if kwargs["settings"] is None:
            kwargs.pop("settings")
        # `mode` keeps wandb off the network; Lightning's own `offline` flag stays False because it refuses
        # log_model offline, although an offline wandb run keeps artifacts and `wandb sync` uploads them
        super().__init__(save_dir=save_dir, project=project, name=name, offline=False, mode=mode, **kwargs)
        #: The W&B mode of the run (:func:`wandb_mode`): ``online``, ``offline`` or ``disabled``.
        self.mode = mode
        #: Set by :class:`SaveConfigToWandb` once the whole resolved configuration is the run's config: the
        #: module's hyper-parameters are then in it (under ``model``) and are not written a second time.
        self.full_config_logged = False
        self._epoch_metrics = tuple(epoch_metrics)
        self._best_metrics = tuple(best_metrics)
        self._metrics_defined = False
        self._best_defined: set[str] = set()
        log.info("W&B mode: %s (set WANDB_MODE=online to upload)", mode)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log as :class:`WandbLogger` does; a new key matching ``best_metrics`` first gets its max/last summary."""
        new = [k for k in metrics if k not in self._best_defined and any(fnmatch.fnmatchcase(k, p) for p in self._best_metrics)]
        if new:
            self._best_defined.update(new)
            try:
                define_epoch_metrics(self.experiment, (), new)
            except Exception as err:
                log.warning("W&B define_metric failed for %s: %s", new, err)
        super().log_metrics(metrics, step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """As :class:`WandbLogger`, unless the resolved configuration is already the run's config (one tree)."""
        if self.full_config_logged:
            return
        super().log_hyperparams(params, *args, **kwargs)

    def continue_run(self, run_id: str) -> None:
        """Log into the W&B run ``run_id`` (``wandb.init(id=run_id, resume="allow")``) rather than a new one.

        A training resumed from its checkpoint continues the run it started: online, W&B appends to it; offline,
        the new ``offline-run-<time>-<run_id>`` folder shares the id and ``wandb sync`` uploads the folders of
        one id in the order they started, as one run (the training's :mod:`~agg2exp_lightning.training.wandb_run`
        calls this).

        Raises:
            ValueError: ``run_id`` is not a non-empty string.
            RuntimeError: the run has already started.

        Example:
            >>> logger = OfflineFirstWandbLogger("runs/demo"); logger.continue_run("3k2x9q1a")  # doctest: +SKIP
        """
        if not isinstance(run_id, str) or not run_id.strip():
            raise ValueError(f"Expected argument `run_id` to be a non-empty string, but got {run_id!r}")
        if self._experiment is not None:
            raise RuntimeError(f"the W&B run {self._experiment.id} has already started: continue_run({run_id!r}) "
                               "must come before the first use of the logger")
        self._wandb_init.update(id=run_id, resume="allow")
        self._id = run_id

    @property
    def experiment(self) -> Any:
        run = super().experiment
        if not self._metrics_defined and callable(getattr(run, "define_metric", None)):
            self._metrics_defined = True
            try:
                define_epoch_metrics(run, self._epoch_metrics)
            except Exception as err:  # a disabled run or an old wandb: plots fall back to the step axis
                log.warning("W&B define_metric failed (%s); values are plotted over the global step", err)
        return run


class SaveConfigToWandb(SaveConfigCallback):
    """LightningCLI's config callback that also puts the full resolved configuration into every W&B run.

    Pass it as ``LightningCLI(..., save_config_callback=SaveConfigToWandb)``: besides ``config.yaml`` in
    the log folder, the run's config gets the whole resolved configuration (``trainer``, its
    ``callbacks`` and ``logger``, ``model``, ``data``, ``seed_everything``, ``ckpt_path``), so runs can
    be compared and filtered by any setting in the W&B UI.
    """

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        config = resolved_config(self.parser, self.config)
        choice = getattr(trainer, "precision_choice", None)
        if choice is not None:  # what precision "auto" picked on this machine, and why
            from agg2exp_lightning.utils.hardware import hardware_summary

            config["precision_choice"] = choice.as_dict()
            config["hardware"] = hardware_summary()
        for logger in loggers:
            try:
                logger.experiment.config.update(config, allow_val_change=True)
                if isinstance(logger, OfflineFirstWandbLogger):
                    logger.full_config_logged = True
            except Exception as err:  # logging must never stop training
                log.warning("could not store the resolved configuration in the W&B run: %s", err)


def resolved_config(parser: Any, config: Any) -> dict[str, Any]:
    """The resolved LightningCLI configuration as plain nested dicts and lists (JSON types only)."""
    import yaml

    return yaml.safe_load(parser.dump(config, skip_none=False, skip_check=True)) or {}


def log_best_validation(trainer: Any, checkpoint: str | None, class_names: Sequence[str], per_scan: Mapping[str, Any]) -> None:
    """The best checkpoint's validation, into every W&B run of ``trainer``: summary ``best/*`` and a per-class table.

    ``best/checkpoint``, ``best/epoch`` (the checkpoint's epoch), ``best/mean_dice_fg``, ``best/dice/<class>``
    in the run summary, and ``best/dice_table``, a ``wandb.Table`` of class, mean Dice and the number of
    scans with the class. Logging must never stop training: a failure is a warning.

    Args:
        trainer: the Trainer (its W&B loggers; rank 0 only writes).
        checkpoint: the best checkpoint's path.
        class_names: ``C`` names, background first.
        per_scan: subject id -> ``[C]`` Dice of the validation scans.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers or not trainer.is_global_zero:
        return
    import math

    import torch

    from agg2exp_lightning.training.dice_table import dice_table

    _, means = dice_table(class_names, per_scan)
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in per_scan.values()]) if per_scan else torch.zeros(0, len(class_names))
    present = (~torch.isnan(stacked)).sum(0).tolist()
    epoch = None
    if checkpoint:
        try:
            epoch = int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("epoch"))
        except Exception as err:  # the epoch is a label; a checkpoint that does not say is no reason to stop
            log.warning("could not read the epoch of %s: %s", checkpoint, err)
    try:
        import wandb

        rows = [[name, None if math.isnan(means[name]) else means[name], int(n)] for name, n in zip(class_names, present)]
        for logger in loggers:
            run = logger.experiment
            run.summary.update({"best/checkpoint": str(checkpoint), "best/epoch": epoch,
                                "best/mean_dice_fg": None if math.isnan(means["mean_foreground"]) else means["mean_foreground"],
                                **{f"best/dice/{k}": v for k, v in means.items() if k != "mean_foreground" and not math.isnan(v)}})
            run.log({"best/dice_table": wandb.Table(columns=["class", "mean Dice", "scans with the class"], data=rows)})
    except Exception as err:
        log.warning("could not log the best checkpoint's validation to W&B: %s", err)

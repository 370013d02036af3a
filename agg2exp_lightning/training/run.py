"""What each ``agg2exp-train`` subcommand does around Lightning's own ``fit`` / ``validate`` / ``test`` /
``predict``: safe resume, atomic checkpoints, disk probes, the Dice table and the closing report.

:func:`train` is the whole command as a function (tests call it with tiny settings); ``cli.py`` only parses.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from agg2exp_lightning.training.configs import check_config_files, expand_shortcuts
from agg2exp_lightning.training.dice_table import dice_table
from agg2exp_lightning.training.disk import check_writable, output_folders
from agg2exp_lightning.training.errors import DISK_ERRNOS, TrainingError, errno_text
from agg2exp_lightning.training.report import where_things_are
from agg2exp_lightning.training.resume import check_resume_checkpoint, read_checkpoint, resume_checkpoint
from agg2exp_lightning.training.wandb_run import start_wandb_runs

log = logging.getLogger(__name__)

__all__ = ["evaluate", "fit", "predict", "prepare_run", "train"]


def prepare_run(trainer: Any, seed: Any) -> Path:
    """Set up what every subcommand needs; returns the run folder.

    Checkpoints go beside the run's other files (``<run>/checkpoints``), a resumed run repeats lost epochs
    exactly (:class:`~agg2exp_lightning.callbacks.exact_resume.ExactResume` seeded from ``seed``), a kill
    mid-save never truncates a checkpoint (:class:`~agg2exp_lightning.checkpoint_io.AtomicCheckpointIO`), and
    a read-only or full disk is named now rather than at the first save.
    """
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from agg2exp_lightning.callbacks.exact_resume import ExactResume
    from agg2exp_lightning.checkpoint_io import AtomicCheckpointIO, remove_stale_partials

    for cb in trainer.checkpoint_callbacks:
        if cb.dirpath is None:
            cb.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
    if not any(isinstance(cb, ExactResume) for cb in trainer.callbacks):
        trainer.callbacks.insert(0, ExactResume(seed if isinstance(seed, int) and not isinstance(seed, bool) else None))
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    run_dir = Path(trainer.default_root_dir)
    if trainer.is_global_zero:
        for folder, what in output_folders(trainer, run_dir):
            check_writable(folder, what)
        for cb in trainer.checkpoint_callbacks:
            remove_stale_partials(cb.dirpath)
        _record_hardware(trainer, run_dir)
    return run_dir


def _record_hardware(trainer: Any, run_dir: Path) -> None:
    """``<run>/hardware.json``: the machine, the precision chosen for it (what ``auto`` picked and why) and the memory format."""
    from agg2exp_lightning.utils import atomic_write_json
    from agg2exp_lightning.utils.hardware import choose_memory_format, hardware_summary

    choice = getattr(trainer, "precision_choice", None)
    record = {"hardware": hardware_summary(), "precision": choice.as_dict() if choice is not None else {"used": str(trainer.precision)}}
    channels_last, why = choose_memory_format(trainer.precision, trainer.strategy.root_device)
    record["memory_format"] = {"channels_last_3d": channels_last, "why": why}
    if choice is not None:
        log.info("training precision %s (asked %s): %s", choice.used, choice.asked, choice.why)
    atomic_write_json(run_dir / "hardware.json", record)


@contextlib.contextmanager
def _disk_errors(run_dir: Path) -> Iterator[None]:
    """A full, read-only or failing disk during the run becomes a TrainingError naming it (others pass)."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        last = run_dir / "checkpoints" / "last.ckpt"
        kept = f"the last complete one is {last}" if last.is_file() else "none was completed"
        where = f" on {err.filename}" if err.filename else ""
        raise TrainingError(
            f"training stopped by a file-system error{where}: {errno_text(err)} (run folder {run_dir}). "
            f"Checkpoints are written atomically: {kept}. Free space or make the folder writable, then run the "
            "same command again to resume."
        ) from err


@contextlib.contextmanager
def _loggers_detached(trainer: Any) -> Iterator[None]:
    """No logger during the block (the best checkpoint's final validation); they are back afterwards."""
    loggers = list(trainer.loggers)
    trainer.loggers = []
    try:
        yield
    finally:
        trainer.loggers = loggers


def _write_dice_table(trainer: Any, run_dir: Path, name: str, heading: str, table: str) -> None:
    if trainer.is_global_zero:
        from agg2exp_lightning.utils import atomic_write_text

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / name, f"{heading}:\n\n{table}")


def fit(trainer: Any, model: Any, datamodule: Any, *, resume: str, ckpt_path: str | None = None) -> dict[str, Any]:
    """Fit (continuing a killed run), then validate the best checkpoint and write ``<run>/dice_table.md``.

    A training that continues from a checkpoint also continues its W&B run (the id recorded in
    ``<run>/wandb_run.json``, :func:`~agg2exp_lightning.training.wandb_run.start_wandb_runs`).

    Args:
        resume: ``auto`` (the run folder's ``checkpoints/last.ckpt`` when it exists), ``never`` or a path.
        ckpt_path: Lightning's ``--ckpt_path``; when given it is the checkpoint to continue from.

    Returns:
        ``{"best_checkpoint", "dice", "run_dir", "resumed_from", "nonfinite_loss_steps"}``.
    """
    run_dir = Path(trainer.default_root_dir)
    if trainer.fast_dev_run:
        ckpt_path = None
    elif ckpt_path is None:
        ckpt_path = resume_checkpoint(resume, run_dir)
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, model)
        log.info("resuming from %s (pass --resume never to start over)", ckpt_path)
    result: dict[str, Any] = {"best_checkpoint": None, "dice": {}, "run_dir": str(run_dir), "resumed_from": ckpt_path,
                              "nonfinite_loss_steps": 0}
    with _disk_errors(run_dir):
        if not trainer.fast_dev_run:  # a resumed training continues its W&B run; no empty offline run is left
            start_wandb_runs(trainer, run_dir, resuming=bool(ckpt_path))
        # weights_only: resuming never unpickles anything but tensors and plain containers
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        result["nonfinite_loss_steps"] = int(getattr(model, "nonfinite_loss_steps", 0))
        if trainer.fast_dev_run or trainer.interrupted:
            return result
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        with _loggers_detached(trainer):  # a repeat of the best epoch: not a new point one epoch after the last
            trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        from agg2exp_lightning.loggers import log_best_validation

        log_best_validation(trainer, best, model.class_names, model.last_val_dice)
        table, means = dice_table(model.class_names, model.last_val_dice)
        _write_dice_table(trainer, run_dir, "dice_table.md",
                          f"Validation Dice of the best checkpoint ({best}) on scans never trained on", table)
        if trainer.is_global_zero:
            print(f"\nValidation Dice (best checkpoint {best}):\n{table}\n{where_things_are(run_dir, trainer)}")
    result.update(best_checkpoint=best, dice=means)
    return result


def evaluation_checkpoint(ckpt_path: str | None, run_dir: Path, subcommand: str) -> str:
    """The checkpoint ``validate`` / ``test`` / ``predict`` use: ``--ckpt_path``, else the run's ``last.ckpt``.

    Raises:
        TrainingError: neither exists.
    """
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise TrainingError(f"Expected argument `--ckpt_path` to be an existing checkpoint, but got {ckpt_path!r}")
        return ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise TrainingError(
            f"{subcommand} needs a checkpoint: pass --ckpt_path PATH (no {last} to fall back on; the run folder is "
            "--trainer.default_root_dir)"
        )
    log.info("%s: no --ckpt_path given, using %s", subcommand, last)
    return str(last)


def evaluate(trainer: Any, model: Any, datamodule: Any, stage: Literal["validate", "test"],
             ckpt_path: str | None = None) -> dict[str, Any]:
    """Per-scan Dice of a checkpoint on the validation (``validate``) or test (``test``) scans.

    Writes ``<run>/dice_table.md`` (validate) or ``<run>/test_dice_table.md`` (test).

    Returns:
        ``{"checkpoint", "dice": {class: mean Dice, "mean_foreground"}, "per_scan": {subject: [C]}, "run_dir"}``.
    """
    run_dir = Path(trainer.default_root_dir)
    ckpt = evaluation_checkpoint(ckpt_path, run_dir, stage)
    with _disk_errors(run_dir):
        getattr(trainer, stage)(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
        per_scan = dict(model.last_val_dice if stage == "validate" else model.last_test_dice)
        table, means = dice_table(model.class_names, per_scan)
        split = "validation" if stage == "validate" else "test"
        name = "dice_table.md" if stage == "validate" else "test_dice_table.md"
        _write_dice_table(trainer, run_dir, name, f"{split.capitalize()} Dice of {ckpt}", table)
        if trainer.is_global_zero:
            print(f"\n{split.capitalize()} Dice ({ckpt}):\n{table}\nWritten to {(run_dir / name).resolve()}")
    return {"checkpoint": ckpt, "dice": means, "per_scan": per_scan, "run_dir": str(run_dir)}


def predict(trainer: Any, model: Any, datamodule: Any, ckpt_path: str | None = None,
            predictions_dir: str | None = None) -> dict[str, Any]:
    """Label maps of the test scans as NIfTI on each scan's own grid, in ``predictions_dir``
    (default ``<run>/predictions``).

    Returns:
        ``{"checkpoint", "predictions_dir", "written": [paths], "run_dir"}``.
    """
    from agg2exp_lightning.training.label_maps import LabelMapWriter

    run_dir = Path(trainer.default_root_dir)
    ckpt = evaluation_checkpoint(ckpt_path, run_dir, "predict")
    out = Path(predictions_dir) if predictions_dir else run_dir / "predictions"
    if trainer.is_global_zero:
        check_writable(out, "the predictions folder (--predictions_dir)")
    writer = LabelMapWriter(out)
    trainer.callbacks.append(writer)
    with _disk_errors(run_dir):
        trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt, return_predictions=False, weights_only=True)
    if trainer.is_global_zero:
        print(f"\n{len(writer.written)} label maps ({ckpt}) written to {out.resolve()}")
    return {"checkpoint": ckpt, "predictions_dir": str(out), "written": [str(p) for p in writer.written],
            "run_dir": str(run_dir)}


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def train(args: list[str] | None = None) -> dict[str, Any]:
    """Run one ``agg2exp-train`` command line (default ``sys.argv[1:]``) and return its result.

    Args:
        args: ``[SUBCOMMAND] --config FILE|NAME [OPTIONS]``: ``fit`` (the default), ``validate``, ``test`` or
            ``predict``; a shipped configuration's name first (``demo``) stands for ``fit --config demo``.
            ``fit --resume auto|never|PATH`` (default auto: continue from the run folder's
            ``checkpoints/last.ckpt``, so a killed run picks up where it stopped).

    Returns:
        The subcommand's result: for ``fit`` ``{"best_checkpoint": path or None, "dice": {class: mean Dice},
        "run_dir": path, "resumed_from": checkpoint path or None, "nonfinite_loss_steps": training steps skipped
        for a NaN/inf loss}``; see :func:`evaluate` and :func:`predict` for the others.

    Raises:
        TrainingError: a configuration the classes refuse, a run folder that cannot be written (read-only,
            full), a checkpoint that cannot be resumed from or loaded (unreadable, not a training checkpoint,
            another model), or a disk that fails during the run; the message names the file, folder or argument.

    Resuming repeats the uninterrupted run exactly (same weights, same global step): every epoch is seeded
    from (seed, epoch) (:class:`~agg2exp_lightning.callbacks.exact_resume.ExactResume`) and checkpoints are
    written atomically (:class:`~agg2exp_lightning.checkpoint_io.AtomicCheckpointIO`).

    Example:
        >>> train(["demo", "--trainer.max_epochs=1"])  # doctest: +SKIP
    """
    from agg2exp_lightning.training.lightning_cli import build_cli

    args = expand_shortcuts(list(sys.argv[1:] if args is None else args))
    check_config_files(args)
    ckpt = _option(args, "--ckpt_path")
    if ckpt and Path(ckpt).is_file():  # LightningCLI reads its hyper-parameters first: refuse a bad file by name
        read_checkpoint(ckpt, ("state_dict",), "load", "Pass --ckpt_path with a checkpoint written by agg2exp-train.")
    return build_cli(args, handlers=sys.modules[__name__]).result  # this module's fit/evaluate/predict run the subcommands

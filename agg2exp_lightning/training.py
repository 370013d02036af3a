"""Training entry point: LightningCLI over :class:`SegmentationModule` and :class:`ThoraxDataModule`.

``train(args)`` does the work (tests call it with tiny settings); ``main()`` only parses.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from agg2exp_lightning.data.datamodule import ThoraxDataModule
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model import SegmentationModule

log = logging.getLogger(__name__)

#: File-system errors that stop a run for a reason outside the program: a full, read-only or failing disk.
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: Hyper-parameters that decide the network's shape (named when a checkpoint does not fit the configured model).
_SHAPE_HPARAMS = ("num_classes", "in_channels", "feature_size", "depths", "num_heads", "norm_name", "use_v2")


class TrainingError(ValueError):
    """A configuration, checkpoint or run folder that training cannot use; the message names it and what
    was expected. ``train.py`` prints it without a traceback and exits with status 2."""

#: Named configs under configs/ that `train.py NAME` accepts as a shortcut for `--config configs/NAME.yaml`.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _expand_shortcut(args: list[str]) -> list[str]:
    if args and not args[0].startswith("-") and (CONFIG_DIR / f"{args[0]}.yaml").is_file():
        return ["--config", str(CONFIG_DIR / f"{args[0]}.yaml"), *args[1:]]
    return args


def _config_paths(args: list[str]) -> list[str]:
    out = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    return out + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def check_config_files(args: list[str]) -> None:
    """Each ``--config`` file exists and holds a YAML mapping; keys and types are LightningCLI's to check.

    Raises:
        TrainingError: naming the file: missing, unreadable, not YAML, or not a mapping of sections.
    """
    import yaml

    for raw in _config_paths(args):
        p = Path(raw)
        if not p.is_file():
            if "\n" in raw or ": " in raw or raw.lstrip().startswith(("{", "[")):
                continue  # an inline YAML string, which LightningCLI accepts too
            raise TrainingError(f"config file {p} (argument --config) does not exist")
        try:
            content = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise TrainingError(f"config file {p} cannot be read as YAML: {str(err).strip()}") from err
        if content is not None and not isinstance(content, dict):
            raise TrainingError(
                f"config file {p}: expected a YAML mapping of sections (seed_everything:, trainer:, model:, data:), "
                f"but it holds a {type(content).__name__}"
            )


def dice_table(class_names: list[str], per_scan: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Markdown table of per-class Dice (NaN-aware mean over scans) and the dict behind it."""
    import torch

    stacked = torch.stack([per_scan[k] for k in sorted(per_scan)]) if per_scan else torch.empty(0, len(class_names))
    means = {}
    lines = ["| class | Dice |", "|---|---|"]
    for i, name in enumerate(class_names):
        col = stacked[:, i]
        col = col[~torch.isnan(col)]
        value = float(col.mean()) if col.numel() else math.nan
        means[name] = value
        lines.append(f"| {name} | {value:.3f} |")
    fg = [v for k, v in means.items() if k != class_names[0] and not math.isnan(v)]
    means["mean_foreground"] = sum(fg) / len(fg) if fg else math.nan
    lines.append(f"| **mean foreground** | **{means['mean_foreground']:.3f}** |")
    return "\n".join(lines) + f"\n\n({len(per_scan)} scans)\n", means


def _cli_class():
    from lightning.pytorch.cli import LightningCLI

    class TrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--resume",
                type=str,
                default="auto",
                help="auto: continue from <default_root_dir>/checkpoints/last.ckpt when it exists; "
                "never: start over; or a checkpoint path",
            )

    return TrainCLI


def resume_checkpoint(resume: str, run_dir: Path) -> str | None:
    """The checkpoint to continue from: ``last.ckpt`` of the run folder (auto), none (never), or a path."""
    if resume == "never":
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise TrainingError(f"Expected argument `--resume` to be auto, never or an existing checkpoint, but got {resume!r}")
    return resume


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_resume_checkpoint(path: str | Path, model: Any) -> None:
    """Refuse, with a message naming ``path``, a checkpoint that training cannot continue from.

    The file is read with ``weights_only=True`` (nothing but tensors and plain containers is ever
    unpickled) and memory-mapped where possible, so checking a large checkpoint costs little.

    Raises:
        TrainingError: the file is unreadable (truncated, not a torch file, or holding pickled objects
            other than tensors and plain containers), is not a Lightning training checkpoint (e.g. a bare
            ``state_dict``), or holds the weights of another model (the differing hyper-parameters named).
    """
    import torch

    p = Path(path)
    ckpt, errors = None, []
    for mmap in (True, False):  # mmap needs the zip format; an old-format file is read whole
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as err:  # noqa: BLE001 - whatever fails, the file cannot be resumed from
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            errors.append(f"{type(err).__name__}: {first}")
    if ckpt is None:
        raise TrainingError(
            f"cannot resume from checkpoint {p}: it cannot be read with weights_only=True ({errors[-1]}). It is "
            "truncated or corrupt, not a torch checkpoint, or holds pickled objects other than tensors and plain "
            "containers (never unpickled here). Pass --resume never to start over (overwriting it) or --resume PATH "
            "for another checkpoint."
        )
    needed = ("state_dict", "optimizer_states", "loops", "global_step")
    missing = [k for k in needed if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise TrainingError(
            f"cannot resume from checkpoint {p}: expected a Lightning training checkpoint with {list(needed)}, "
            f"but it lacks {missing} (found {found}). A bare state_dict or a weights-only checkpoint holds no "
            "optimiser or loop state to continue from."
        )
    # the loss's class weights are set when fitting starts (after this check) and are not the model's weights
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape") and not k.startswith("loss.")}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("loss.")}
    if theirs != ours:
        hp_theirs = dict(ckpt.get("hyper_parameters") or {})
        hp_ours = dict(getattr(model, "hparams", {}) or {})
        differ = [
            f"{k}={hp_theirs.get(k)!r} in the checkpoint, {hp_ours.get(k)!r} configured"
            for k in _SHAPE_HPARAMS
            if k in hp_theirs and _plain(hp_theirs.get(k)) != _plain(hp_ours.get(k))
        ]
        shapes = [f"{k} {theirs[k]} vs {ours[k]}" for k in sorted(set(theirs) & set(ours)) if theirs[k] != ours[k]][:3]
        extra, lacking = sorted(set(theirs) - set(ours))[:3], sorted(set(ours) - set(theirs))[:3]
        detail = "; ".join(differ) or "; ".join(
            part
            for part in (shapes and f"shapes differ: {', '.join(shapes)}", extra and f"unexpected weights {extra}",
                         lacking and f"missing weights {lacking}")
            if part
        )
        raise TrainingError(
            f"cannot resume from checkpoint {p}: it holds the weights of another model than the one configured "
            f"({detail}). Use the configuration it was trained with, or --resume never to start over."
        )


def _errno_text(err: OSError) -> str:
    code = errno.errorcode.get(err.errno or 0, "")
    return f"{err.strerror or err}" + (f" [{code}]" if code else "")


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
            f"{what} {folder} is not writable: {_errno_text(err)}. Free space or make it writable, or choose "
            "another folder (--trainer.default_root_dir)."
        ) from err


def _output_folders(trainer: Any, run_dir: Path) -> list[tuple[Path, str]]:
    """The local folders a run writes to: run folder, checkpoint folders, loggers' folders."""
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


def _build_cli(args: list[str]):
    """LightningCLI with the classes instantiated; errors of the classes' own checks become TrainingError."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return _cli_class()(
            SegmentationModule,
            ThoraxDataModule,
            args=args,
            run=False,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            subclass_mode_model=False,
            subclass_mode_data=False,
        )
    except DataError:
        raise
    except (ValueError, TypeError, MisconfigurationException, OSError) as err:
        disk = _disk_error_in_chain(err)
        if disk is not None:  # e.g. a logger that cannot create its folder: name the folder, not a Union type
            raise TrainingError(
                f"cannot write {disk.filename or 'the run folder'}: {_errno_text(disk)}. Free space or make it "
                "writable, or choose another folder (--trainer.default_root_dir, the logger's save_dir)."
            ) from err
        if isinstance(err, OSError):
            raise
        raise TrainingError(f"invalid configuration: {err}") from err


def _disk_error_in_chain(err: BaseException) -> OSError | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def train(args: list[str] | None = None) -> dict[str, Any]:
    """Fit the model as configured, then validate the best checkpoint on the held-out scans.

    Args:
        args: command-line style arguments for LightningCLI (``["--config", "configs/demo.yaml",
            "--trainer.max_epochs=1"]``); ``--resume auto|never|PATH`` (default auto: continue from
            the run folder's ``checkpoints/last.ckpt``, so a killed run picks up where it stopped); a leading config name (``demo``) stands for ``--config configs/demo.yaml``.

    Returns:
        ``{"best_checkpoint": path or None, "dice": {class: mean Dice}, "run_dir": path,
        "resumed_from": checkpoint path or None, "nonfinite_loss_steps": training steps skipped for a NaN/inf loss}``.

    Raises:
        TrainingError: a configuration the classes refuse, a run folder that cannot be written (read-only,
            full), a checkpoint that cannot be resumed from (unreadable, not a training checkpoint, another
            model), or a disk that fails during the run; the message names the file, folder or argument.

    Resuming repeats the uninterrupted run exactly (same weights, same global step): every epoch is seeded
    from (seed, epoch) (:class:`~agg2exp_lightning.callbacks.exact_resume.ExactResume`) and checkpoints are
    written atomically (:class:`~agg2exp_lightning.checkpoint_io.AtomicCheckpointIO`).
    """
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from agg2exp_lightning.callbacks.exact_resume import ExactResume
    from agg2exp_lightning.checkpoint_io import AtomicCheckpointIO, remove_stale_partials

    args = _expand_shortcut(list(sys.argv[1:] if args is None else args))
    check_config_files(args)
    cli = _build_cli(args)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    for cb in trainer.checkpoint_callbacks:  # keep checkpoints beside the run's other files
        if cb.dirpath is None:
            cb.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
    if not any(isinstance(cb, ExactResume) for cb in trainer.callbacks):  # a resumed run repeats lost epochs exactly
        seed = cli.config.get("seed_everything")
        trainer.callbacks.insert(0, ExactResume(seed if isinstance(seed, int) and not isinstance(seed, bool) else None))
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a kill mid-save never truncates last.ckpt
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    run_dir = Path(trainer.default_root_dir)
    if trainer.is_global_zero:  # a read-only or full disk: a clear message now, not a traceback at the first save
        for folder, what in _output_folders(trainer, run_dir):
            check_writable(folder, what)
        for cb in trainer.checkpoint_callbacks:
            remove_stale_partials(cb.dirpath)
    ckpt_path = None if trainer.fast_dev_run else resume_checkpoint(cli.config["resume"], run_dir)
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, model)
        log.info("resuming from %s (pass --resume never to start over)", ckpt_path)
    result: dict[str, Any] = {"best_checkpoint": None, "dice": {}, "run_dir": str(run_dir), "resumed_from": ckpt_path,
                              "nonfinite_loss_steps": 0}
    try:
        # weights_only: resuming never unpickles anything but tensors and plain containers
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        result["nonfinite_loss_steps"] = int(getattr(model, "nonfinite_loss_steps", 0))
        if trainer.fast_dev_run or trainer.interrupted:
            return result
        ckpt_cb = trainer.checkpoint_callback
        best = getattr(ckpt_cb, "best_model_path", "") or None
        trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        table, means = dice_table(model.class_names, model.last_val_dice)
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "dice_table.md").write_text(
                f"Validation Dice of the best checkpoint ({best}) on scans never trained on:\n\n{table}"
            )
            print(f"\nValidation Dice (best checkpoint {best}):\n{table}\n{_where_things_are(run_dir, trainer)}")
    except OSError as err:
        if err.errno not in _DISK_ERRNOS:
            raise
        last = run_dir / "checkpoints" / "last.ckpt"
        kept = f"the last complete one is {last}" if last.is_file() else "none was completed"
        where = f" on {err.filename}" if err.filename else ""
        raise TrainingError(
            f"training stopped by a file-system error{where}: {_errno_text(err)} (run folder {run_dir}). "
            f"Checkpoints are written atomically: {kept}. Free space or make the folder writable, then run the "
            "same command again to resume."
        ) from err
    result.update(best_checkpoint=best, dice=means)
    return result


def _where_things_are(run_dir: Path, trainer: Any) -> str:
    """The closing lines of a run: where its checkpoints, logs and monitor figures are (those that exist)."""
    from agg2exp_lightning.callbacks._plumbing import run_folder, wandb_loggers

    monitors = run_folder(trainer)
    places = [("checkpoints", Path(cb.dirpath)) for cb in trainer.checkpoint_callbacks if cb.dirpath]
    places += [("Dice table", run_dir / "dice_table.md"), ("explanation figures", monitors / "figures"),
               ("explanation tables", monitors / "tables")]
    if trainer.log_dir:
        places.append(("logs", Path(trainer.log_dir)))
    for logger in wandb_loggers(trainer):
        experiment = getattr(logger, "_experiment", None)  # never start a W&B run just to print its folder
        if getattr(experiment, "dir", None):
            places.append(("W&B run (wandb sync it)", Path(experiment.dir).parent))
    lines = [f"Run folder: {run_dir.resolve()}"]
    seen = set()
    for label, path in places:
        if path.exists() and path.resolve() not in seen:
            seen.add(path.resolve())
            lines.append(f"  {label + ':':<26}{path.resolve()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``agg2exp-train``: ``agg2exp-train demo`` or ``agg2exp-train --config FILE``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(argv)
    except Exception as err:  # bad data, config, checkpoint or run folder: a message naming it, no traceback
        from agg2exp_lightning.errors import find_data_error

        known = err if isinstance(err, TrainingError) else find_data_error(err)
        if known is None:
            raise
        print(f"agg2exp-train: error: {known}", file=sys.stderr)
        return 2
    return 0

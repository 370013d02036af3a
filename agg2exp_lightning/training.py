"""Training entry point: LightningCLI over :class:`SegmentationModule` and :class:`ThoraxDataModule`.

``train(args)`` does the work (tests call it with tiny settings); ``main()`` only parses.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

from agg2exp_lightning.data.datamodule import ThoraxDataModule
from agg2exp_lightning.model import SegmentationModule

log = logging.getLogger(__name__)

#: Named configs under configs/ that `train.py NAME` accepts as a shortcut for `--config configs/NAME.yaml`.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _expand_shortcut(args: list[str]) -> list[str]:
    if args and not args[0].startswith("-") and (CONFIG_DIR / f"{args[0]}.yaml").is_file():
        return ["--config", str(CONFIG_DIR / f"{args[0]}.yaml"), *args[1:]]
    return args


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
        raise ValueError(f"Expected argument `--resume` to be auto, never or an existing checkpoint, but got {resume!r}")
    return resume


def train(args: list[str] | None = None) -> dict[str, Any]:
    """Fit the model as configured, then validate the best checkpoint on the held-out scans.

    Args:
        args: command-line style arguments for LightningCLI (``["--config", "configs/demo.yaml",
            "--trainer.max_epochs=1"]``); ``--resume auto|never|PATH`` (default auto: continue from
            the run folder's ``checkpoints/last.ckpt``, so a killed run picks up where it stopped); a leading config name (``demo``) stands for ``--config configs/demo.yaml``.

    Returns:
        ``{"best_checkpoint": path or None, "dice": {class: mean Dice}, "run_dir": path,
        "resumed_from": checkpoint path or None}``.
    """
    args = _expand_shortcut(list(sys.argv[1:] if args is None else args))
    cli = _cli_class()(
        SegmentationModule,
        ThoraxDataModule,
        args=args,
        run=False,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        subclass_mode_model=False,
        subclass_mode_data=False,
    )
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    for cb in trainer.checkpoint_callbacks:  # keep checkpoints beside the run's other files
        if cb.dirpath is None:
            cb.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
    run_dir = Path(trainer.default_root_dir)
    ckpt_path = None if trainer.fast_dev_run else resume_checkpoint(cli.config["resume"], run_dir)
    if ckpt_path:
        log.info("resuming from %s (pass --resume never to start over)", ckpt_path)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    result: dict[str, Any] = {"best_checkpoint": None, "dice": {}, "run_dir": str(run_dir), "resumed_from": ckpt_path}
    if trainer.fast_dev_run or trainer.interrupted:
        return result
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") or None
    trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    table, means = dice_table(model.class_names, model.last_val_dice)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "dice_table.md").write_text(
            f"Validation Dice of the best checkpoint ({best}) on scans never trained on:\n\n{table}"
        )
        print(f"\nValidation Dice (best checkpoint {best}):\n{table}\n{_where_things_are(run_dir, trainer)}")
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
    train(argv)
    return 0

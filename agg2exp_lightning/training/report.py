"""The closing lines of a run: where its checkpoints, Dice table, monitor files and logs are."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from agg2exp_lightning.run_files import log_folder, run_folder, wandb_loggers

__all__ = ["where_things_are"]


def where_things_are(run_dir: Path, trainer: Any) -> str:
    """One line per place that exists: checkpoints, Dice table, explanation figures/tables, logs, W&B run."""
    monitors = run_folder(trainer)
    places = [("checkpoints", Path(cb.dirpath)) for cb in trainer.checkpoint_callbacks if cb.dirpath]
    places += [("Dice table", run_dir / "dice_table.md"), ("explanation figures", monitors / "figures"),
               ("explanation tables", monitors / "tables")]
    logs = log_folder(trainer)  # never trainer.log_dir here: a collective, and this runs on rank zero only
    if logs:
        places.append(("logs", Path(logs)))
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

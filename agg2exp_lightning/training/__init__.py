"""Training: ``agg2exp-train fit|validate|test|predict`` (LightningCLI) and :func:`train`, the same as a function.

One job per module:

- :mod:`~agg2exp_lightning.training.cli`: the command line (parsing only) and ``main``;
- :mod:`~agg2exp_lightning.training.run`: what each subcommand does around Lightning's own;
- :mod:`~agg2exp_lightning.training.configs`: the shipped configurations and the ``--config`` checks;
- :mod:`~agg2exp_lightning.training.resume`: which checkpoint to continue from, and whether one can;
- :mod:`~agg2exp_lightning.training.disk`: probing the folders a run writes to;
- :mod:`~agg2exp_lightning.training.dice_table`: the per-class Dice table;
- :mod:`~agg2exp_lightning.training.report`: where a finished run's files are;
- :mod:`~agg2exp_lightning.training.label_maps`: ``predict``'s NIfTI label maps on each scan's own grid;
- :mod:`~agg2exp_lightning.training.errors`: :class:`TrainingError` and disk failures.
"""
from __future__ import annotations

from agg2exp_lightning.training.configs import CONFIG_DIR, check_config_files, named_configs
from agg2exp_lightning.training.dice_table import dice_table
from agg2exp_lightning.training.errors import TrainingError
from agg2exp_lightning.training.label_maps import LabelMapWriter, to_original_grid
from agg2exp_lightning.training.resume import check_resume_checkpoint, resume_checkpoint
from agg2exp_lightning.training.run import train


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``agg2exp-train`` (see :func:`agg2exp_lightning.training.cli.main`)."""
    from agg2exp_lightning.training.cli import main as cli_main

    return cli_main(argv)


__all__ = [
    "CONFIG_DIR",
    "LabelMapWriter",
    "TrainingError",
    "check_config_files",
    "check_resume_checkpoint",
    "dice_table",
    "main",
    "named_configs",
    "resume_checkpoint",
    "to_original_grid",
    "train",
]

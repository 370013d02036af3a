"""Training: ``agg2exp-train fit|validate|test|predict`` (LightningCLI) and :func:`train`, the same as a function.

One job per module:

- :mod:`~agg2exp_lightning.training.cli`: the command line (parsing only) and ``main``;
- :mod:`~agg2exp_lightning.training.run`: what each subcommand does around Lightning's own;
- :mod:`~agg2exp_lightning.training.configs`: the shipped configurations and the ``--config`` checks;
- :mod:`~agg2exp_lightning.training.resume`: which checkpoint to continue from, and whether one can;
- :mod:`~agg2exp_lightning.training.wandb_run`: which W&B run a training logs to (a resumed one continues its own);
- :mod:`~agg2exp_lightning.training.disk`: probing the folders a run writes to;
- :mod:`~agg2exp_lightning.training.dice_table`: the per-class Dice table;
- :mod:`~agg2exp_lightning.training.report`: where a finished run's files are;
- :mod:`~agg2exp_lightning.training.label_maps`: ``predict``'s NIfTI label maps on each scan's own grid;
- :mod:`~agg2exp_lightning.training.errors`: :class:`TrainingError` and disk failures.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from agg2exp_lightning.training.configs import CONFIG_DIR, check_config_files, named_configs
from agg2exp_lightning.training.errors import TrainingError

__all__ = ["CONFIG_DIR", "LabelMapWriter", "TrainingError", "check_config_files", "check_resume_checkpoint",
           "main", "named_configs", "resume_checkpoint", "to_original_grid", "train"]

#: Names that import Lightning and torch, loaded on first use (PEP 562) so that ``agg2exp-train --help`` is instant.
#: (No name here may equal a submodule's: importing ``training.dice_table`` anywhere would replace the lazy function
#: with the module, so the Dice table is imported from its module, ``training.dice_table.dice_table``.)
_LAZY = {"LabelMapWriter": "label_maps", "to_original_grid": "label_maps",
         "check_resume_checkpoint": "resume", "resume_checkpoint": "resume", "train": "run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"agg2exp_lightning.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``agg2exp-train`` (see :func:`agg2exp_lightning.training.cli.main`).

    ``--help`` and ``--version`` alone are answered here, before Lightning is imported.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        from agg2exp_lightning.training.help_text import top_level_help

        print(top_level_help(), end="")
        return 0
    if args == ["--version"]:
        from agg2exp_lightning import __version__

        print(f"agg2exp-train {__version__}")
        return 0
    from agg2exp_lightning.training.cli import main as cli_main

    return cli_main(argv)

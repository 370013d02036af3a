"""``agg2exp-train``: the console entry point over LightningCLI's ``fit`` / ``validate`` / ``test`` / ``predict``.

Parsing is :mod:`agg2exp_lightning.training.lightning_cli`; the work of each subcommand is in
:mod:`agg2exp_lightning.training.run` (:func:`~agg2exp_lightning.training.run.train`).
"""
from __future__ import annotations

import logging
import sys

from agg2exp_lightning import __version__
from agg2exp_lightning.training import lightning_cli, run
from agg2exp_lightning.training.errors import TrainingError
from agg2exp_lightning.training.lightning_cli import TrainCLI
from agg2exp_lightning.utils.allocator import keep_freed_memory

__all__ = ["TrainCLI", "build_cli", "main"]


def build_cli(args: list[str]) -> TrainCLI:
    """Parse ``args`` (a subcommand first), build the classes and run the subcommand through
    :mod:`~agg2exp_lightning.training.run` (:func:`agg2exp_lightning.training.lightning_cli.build_cli` with its handlers)."""
    return lightning_cli.build_cli(args, handlers=run)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``agg2exp-train``: ``agg2exp-train demo``, ``agg2exp-train fit --config FILE``, ...

    Returns:
        0, or 2 after a one-line message for bad data, configuration, checkpoint or run folder.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        print(f"agg2exp-train {__version__}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # CPU steps: no page faults on memory freed by the previous step (utils/allocator.py)
    try:
        run.train(argv)
    except Exception as err:  # bad data, config, checkpoint or run folder: a message naming it, no traceback
        from agg2exp_lightning.errors import find_data_error

        known = err if isinstance(err, TrainingError) else find_data_error(err)
        if known is None:
            raise
        print(f"agg2exp-train: error: {known}", file=sys.stderr)
        return 2
    return 0

"""The LightningCLI of ``agg2exp-train``: ``fit`` / ``validate`` / ``test`` / ``predict`` over
:class:`~agg2exp_lightning.model.SegmentationModule` and :class:`~agg2exp_lightning.data.datamodule.ThoraxDataModule`.

Parsing only: the work of each subcommand is in :mod:`agg2exp_lightning.training.run`, which builds this
CLI with itself as the handlers; the entry point (``main``) is :mod:`agg2exp_lightning.training.cli`.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from agg2exp_lightning import __version__
from agg2exp_lightning.data.datamodule import ThoraxDataModule
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.loggers import SaveConfigToWandb
from agg2exp_lightning.model import SegmentationModule
from agg2exp_lightning.training.configs import named_configs
from agg2exp_lightning.training.errors import TrainingError, disk_error_in_chain, errno_text
from agg2exp_lightning.training.help_text import DESCRIPTION, SUBCOMMAND_HELP
from agg2exp_lightning.training.trainer import AutoPrecisionTrainer

__all__ = ["TrainCLI", "build_cli"]

class TrainCLI(LightningCLI):
    """LightningCLI whose subcommands run through ``handlers`` (:mod:`agg2exp_lightning.training.run`, which
    builds this class: handed over, not imported, so the two modules do not import each other); ``result``
    holds the subcommand's result."""

    result: dict[str, Any]

    def __init__(self, *args: Any, handlers: Any, **kwargs: Any) -> None:
        self.handlers = handlers  # before LightningCLI's __init__, which runs the subcommand
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--resume", type=str, default="auto",
            help="(fit) auto: continue from <default_root_dir>/checkpoints/last.ckpt when it exists; never: start "
                 "over; or a checkpoint path",
        )
        parser.add_argument(
            "--predictions_dir", type=str, default=None,
            help="(predict) folder of the NIfTI label maps (default <default_root_dir>/predictions)",
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # train() always hands over the whole command line (sys.argv[1:] with its shortcuts expanded), so the
        # base class's warning about args given beside a command line does not apply.
        self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        """The classes' own checks (and a logger that cannot create its folder) become a TrainingError."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
        except DataError:
            raise
        except (ValueError, TypeError, MisconfigurationException, OSError) as err:
            disk = disk_error_in_chain(err)
            if disk is not None:  # name the folder, not a Union type
                raise TrainingError(
                    f"cannot write {disk.filename or 'the run folder'}: {errno_text(disk)}. Free space or make it "
                    "writable, or choose another folder (--trainer.default_root_dir, the logger's save_dir)."
                ) from err
            if isinstance(err, OSError):
                raise
            raise TrainingError(f"invalid configuration: {err}") from err

    def _options(self) -> Any:
        return self.config[self.subcommand]

    def fit(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **_: Any) -> None:
        self.handlers.prepare_run(self.trainer, self._options().get("seed_everything"))
        self.result = self.handlers.fit(self.trainer, model, datamodule, resume=self._options()["resume"], ckpt_path=ckpt_path)

    def validate(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **_: Any) -> None:
        self.handlers.prepare_run(self.trainer, self._options().get("seed_everything"))
        self.result = self.handlers.evaluate(self.trainer, model, datamodule, "validate", ckpt_path)

    def test(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **_: Any) -> None:
        self.handlers.prepare_run(self.trainer, self._options().get("seed_everything"))
        self.result = self.handlers.evaluate(self.trainer, model, datamodule, "test", ckpt_path)

    def predict(self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, **_: Any) -> None:
        self.handlers.prepare_run(self.trainer, self._options().get("seed_everything"))
        self.result = self.handlers.predict(self.trainer, model, datamodule, ckpt_path, self._options()["predictions_dir"])


def build_cli(args: list[str], handlers: Any) -> TrainCLI:
    """Parse ``args`` (a subcommand first), build the classes and run the subcommand through ``handlers``
    (an object with ``prepare_run``, ``fit``, ``evaluate`` and ``predict`` as :mod:`~agg2exp_lightning.training.run` has)."""
    return TrainCLI(
        SegmentationModule,
        ThoraxDataModule,
        trainer_class=AutoPrecisionTrainer,  # precision "auto": bf16 only where the hardware runs it natively
        args=args,
        handlers=handlers,
        seed_everything_default=0,
        save_config_callback=SaveConfigToWandb,  # config.yaml in the run folder, and the full config in a W&B run
        save_config_kwargs={"overwrite": True},
        subclass_mode_model=False,
        subclass_mode_data=False,
        parser_kwargs={
            "description": DESCRIPTION.format(names=", ".join(named_configs())),
            "version": f"agg2exp-train {__version__}",
            **{name: {"description": text} for name, text in SUBCOMMAND_HELP.items()},
        },
    )

"""The configurations shipped with the package (``demo``, ``paper``) and the checks of ``--config`` files."""
from __future__ import annotations

from pathlib import Path

from agg2exp_lightning.training.errors import TrainingError

__all__ = ["CONFIG_DIR", "SUBCOMMANDS", "check_config_files", "expand_shortcuts", "named_configs"]

#: The shipped configurations (package data: present in a source checkout and in an installed wheel).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: LightningCLI's subcommands.
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def named_configs() -> dict[str, Path]:
    """Name -> file of every shipped configuration (``{"demo": .../demo.yaml, "paper": ...}``)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def _config_value(value: str) -> str:
    """A ``--config`` value with a shipped configuration's name replaced by its file (files win)."""
    named = named_configs()
    return str(named[value]) if value in named and not Path(value).is_file() else value


def expand_shortcuts(args: list[str]) -> list[str]:
    """The command line LightningCLI parses.

    - ``demo ARGS`` (any shipped configuration's name first) stands for ``fit --config demo ARGS``;
    - a command line without a subcommand (``--config FILE ...``) is a ``fit``;
    - ``--config NAME`` with a shipped configuration's name (and no such file) is that configuration.

    Example:
        >>> expand_shortcuts(["demo", "--trainer.max_epochs=1"])[:2]
        ['fit', '--config']
    """
    args = list(args)
    if args and args[0] in named_configs():
        args = ["fit", "--config", args[0], *args[1:]]
    elif args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
        args = ["fit", *args]
    out = []
    for i, arg in enumerate(args):
        if i and args[i - 1] == "--config":
            arg = _config_value(arg)
        elif arg.startswith("--config="):
            arg = "--config=" + _config_value(arg.split("=", 1)[1])
        out.append(arg)
    return out


def _config_paths(args: list[str]) -> list[str]:
    out = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    return out + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def check_config_files(args: list[str]) -> None:
    """Each ``--config`` file exists and holds a YAML mapping; keys and types are LightningCLI's to check.

    Raises:
        TrainingError: naming the file: missing (with the shipped names), unreadable, not YAML, or not a
            mapping of sections.
    """
    import yaml

    for raw in _config_paths(args):
        p = Path(raw)
        if not p.is_file():
            if "\n" in raw or ": " in raw or raw.lstrip().startswith(("{", "[")):
                continue  # an inline YAML string, which LightningCLI accepts too
            raise TrainingError(
                f"config file {p} (argument --config) does not exist; shipped configurations: "
                f"{', '.join(named_configs())}"
            )
        try:
            content = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise TrainingError(f"config file {p} cannot be read as YAML: {str(err).strip()}") from err
        if content is not None and not isinstance(content, dict):
            raise TrainingError(
                f"config file {p}: expected a YAML mapping of sections (seed_everything:, trainer:, model:, data:), "
                f"but it holds a {type(content).__name__}"
            )

"""What every command line of the toolkit shares: one vocabulary for models, devices, method options and errors.

The audit (``agg2exp-audit``), the method comparison (``agg2exp-compare-methods``) and the other
commands build their parsers from these pieces, so a flag means the same everywhere:

- ``--model SOURCE`` (alias ``--checkpoint``): this toolkit's checkpoint, a MONAI bundle folder or a
  ``package.module:function`` factory; ``--weights`` for the factory's state dict; ``--label-map``
  naming the output channels (:mod:`agg2exp_lightning.model_loading`).
- ``--accelerator``, ``--devices`` (and ``--strategy`` where work is spread over processes), in
  Lightning's spelling.
- ``--method-option [METHOD.]KEY=VALUE``: one syntax on every command; values are parsed as JSON
  when they can be; the ``METHOD.`` prefix limits an option to one method.
- ``--version``; an error from bad input is one line, exit status 2.
"""
from __future__ import annotations

import argparse
import errno
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "METHOD_OPTION_HELP",
    "MethodOption",
    "add_device_arguments",
    "add_model_arguments",
    "add_version_argument",
    "check_unprefixed_options",
    "describe_os_error",
    "method_options_for",
    "options_by_method",
    "parse_devices",
    "parse_method_options",
    "single_device",
]

METHOD_OPTION_SYNTAX = "[METHOD.]KEY=VALUE"
#: Help of ``--method-option``, the same on every command.
METHOD_OPTION_HELP = ("option of the attribution method(s), repeatable: KEY=VALUE for every method that takes KEY, "
                      "METHOD.KEY=VALUE for one method (e.g. smoothgrad.n_samples=10); VALUE parsed as JSON when it can be")


class ArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors are one line, ``PROG: error: MESSAGE (see PROG --help)``.

    argparse prints the whole usage block before the line that matters (``--contamination 2``); the block is
    one ``--help`` away. Exit status 2, as argparse's.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: the package version."""
    from agg2exp_lightning import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="show the version and exit")


def add_model_arguments(parser: argparse.ArgumentParser | Any, *, required: bool = True, source_group: Any = None) -> None:
    """``--model/--checkpoint``, ``--weights``, ``--label-map`` (see :func:`agg2exp_lightning.model_loading.load_model`).

    Args:
        parser: where ``--weights`` and ``--label-map`` go (a parser or an argument group).
        required: whether ``--model`` is required (ignored with ``source_group``).
        source_group: a mutually exclusive group to put ``--model`` in (e.g. beside ``--from-table``).
    """
    model_help = ("the model: a checkpoint of this toolkit's training (.ckpt), a MONAI bundle folder "
                  "(configs/inference.json, run as monai.bundle run runs it), an nnU-Net v2 trained-model folder "
                  "(dataset.json, plans.json, fold_K/), or package.module:function returning a torch.nn.Module")
    if source_group is not None:
        source_group.add_argument("--model", "--checkpoint", dest="model", metavar="SOURCE", help=model_help)
    else:
        parser.add_argument("--model", "--checkpoint", dest="model", required=required, metavar="SOURCE", help=model_help)
    parser.add_argument("--weights", metavar="FILE",
                        help="state dict of a package.module:function model (read with weights_only=True)")
    parser.add_argument("--label-map", metavar="FILE",
                        help="JSON/YAML naming the model's output channels (list in channel order, name->id or id->name); "
                             "default: the checkpoint's names or the bundle's metadata.json (the thorax labels for --from-table)")
    parser.add_argument("--bundle-override", action="append", default=[], metavar="KEY=VALUE",
                        help="override of a MONAI bundle's config in monai's id syntax, repeatable "
                             "(e.g. inferer#roi_size=[96,96,96]; VALUE parsed as JSON/YAML when it can be)")
    parser.add_argument("--folds", nargs="+", metavar="K",
                        help="folds of an nnU-Net folder, ensembled as nnU-Net does (mean of the logits), or 'all' "
                             "(the fold_all model); default: every fold_K present")
    parser.add_argument("--checkpoint-name", metavar="FILE",
                        help="checkpoint file of each nnU-Net fold (default checkpoint_final.pth)")


def model_source_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_model``'s source options from the parsed ``--bundle-override``, ``--folds`` and ``--checkpoint-name``."""
    folds = getattr(args, "folds", None)
    return {"bundle_overrides": list(getattr(args, "bundle_override", None) or []) or None,
            "folds": None if folds is None else (folds[0] if folds == ["all"] else folds),
            "checkpoint_name": getattr(args, "checkpoint_name", None)}


def add_device_arguments(parser: argparse.ArgumentParser | Any, *, strategy: bool = True, default_devices: str = "1") -> None:
    """``--accelerator``, ``--devices`` and, with ``strategy``, ``--strategy``, as Lightning's Trainer spells them."""
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu, cuda, mps (default %(default)s)")
    parser.add_argument("--devices", default=default_devices,
                        help="Lightning devices: a count (2), indices (0,1) or auto (default %(default)s)" if strategy else
                             "the one device to use: 1 (the first), or an index followed by a comma (1, = the second) (default %(default)s)")
    if strategy:
        parser.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default %(default)s)")


def parse_devices(text: str | int) -> int | str | list[int]:
    """``"2"`` -> 2, ``"0,1"`` / ``"1,"`` -> ``[0, 1]`` / ``[1]``, ``"auto"`` / ``"-1"`` kept as Lightning reads them.

    Raises:
        ValueError: anything else, naming ``--devices``.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    if s == "auto":
        return s
    if s.lstrip("-").isdigit():
        return int(s)
    parts = [p.strip() for p in s.strip("[]").split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts):
        return [int(p) for p in parts]
    raise ValueError(f"Expected `--devices` to be a count (2), indices (0,1 or 1,) or auto, but got {text!r}")


def single_device(accelerator: str, devices: str | int) -> Any:
    """The one ``torch.device`` that a single-process command runs on.

    ``--devices 1`` (default) is the accelerator's first device, ``--devices 2,`` the one of index 2.

    Raises:
        ValueError: more than one device, an unknown accelerator, or one that is not available.
    """
    import torch

    from agg2exp_lightning.utils import look_up_option

    accelerator = look_up_option("--accelerator", str(accelerator).lower(), ("auto", "cpu", "gpu", "cuda", "mps"))
    parsed = parse_devices(devices)
    if isinstance(parsed, list):
        if len(parsed) != 1:
            raise ValueError(f"Expected `--devices` to name one device for this command, but got {devices!r}")
        index = parsed[0]
    elif parsed in (1, "auto"):
        index = 0
    else:
        raise ValueError(f"Expected `--devices` to name one device for this command (1, or an index as 2,), but got {devices!r}")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"`--accelerator {accelerator} --devices {devices}`: no such CUDA device here "
                             f"({torch.cuda.device_count()} available)")
        return torch.device("cuda", index)
    return torch.device("mps")


@dataclass(frozen=True)
class MethodOption:
    """One ``--method-option``: ``method`` is ``None`` when the option has no ``METHOD.`` prefix."""

    method: str | None
    key: str
    value: Any


def parse_method_options(pairs: Iterable[str], methods: Sequence[str] | None = None) -> list[MethodOption]:
    """Parse ``[METHOD.]KEY=VALUE`` items (values as JSON when they parse, else the text).

    Args:
        pairs: the items as given.
        methods: known method names; a prefix is resolved through
            :func:`agg2exp_lightning.explain.resolve_method_name` (aliases such as ``sg``) and must be
            among ``methods`` when they are given.

    Returns:
        The options in the order given.

    Raises:
        ValueError: an item without ``=`` or key, or a prefix that is no method (with the nearest name).

    Example:
        >>> parse_method_options(["smoothgrad.n_samples=10", "max_memory=1e9"])  # doctest: +NORMALIZE_WHITESPACE
        [MethodOption(method='smoothgrad', key='n_samples', value=10), MethodOption(method=None, key='max_memory', value=1000000000.0)]
    """
    from agg2exp_lightning.utils import did_you_mean

    out = []
    for pair in pairs:
        name, sep, text = str(pair).partition("=")
        method, dot, key = name.strip().rpartition(".")
        if not sep or not key.strip():
            raise ValueError(f"Expected --method-option as {METHOD_OPTION_SYNTAX} (e.g. smoothgrad.n_samples=10 or n_samples=10), got {pair!r}")
        resolved = None
        if dot:
            try:
                from agg2exp_lightning.explain import resolve_method_name

                resolved = resolve_method_name(method.strip())
            except ValueError:
                resolved = None
            known = list(methods) if methods is not None else None
            if resolved is None or (known is not None and resolved not in known):
                choices = known if known is not None else []
                raise ValueError(f"--method-option {pair!r}: {method!r} is not a method{'' if not choices else f' of this command; expected one of {choices}'}"
                                 f"{did_you_mean(method, choices)}")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.append(MethodOption(resolved, key.strip(), value))
    return out


def method_options_for(options: Sequence[MethodOption], method: str) -> dict[str, Any]:
    """The keyword options of one method: unprefixed ones, then those prefixed with ``method`` (which win)."""
    merged = {o.key: o.value for o in options if o.method is None}
    merged.update({o.key: o.value for o in options if o.method == method})
    return merged


def describe_os_error(err: OSError, out_dir: str | Path) -> str:
    """A one-line account of a failed read or write, naming the file and, for writes there, the output folder."""
    reason = f"{err.strerror or err} ({errno.errorcode.get(err.errno, err.errno)})" if err.errno else str(err)
    where = Path(err.filename) if err.filename else None
    out = Path(out_dir)
    inside = where is not None and (where.resolve() == out.resolve() or out.resolve() in where.resolve().parents)
    if where is None or inside:
        return (f"cannot write to the output folder {out}{f' ({where})' if where is not None else ''}: {reason}. "
                "Expected a writable --out with free space; results finished there so far are kept, so rerun the "
                "same command to resume once it is writable, or choose another --out")
    return f"cannot access {where}: {reason}"


def options_by_method(options: Sequence[MethodOption], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{method: options}`` for each of ``methods`` (see :func:`method_options_for`); methods without options left out."""
    out = {m: method_options_for(options, m) for m in methods}
    return {m: o for m, o in out.items() if o}


def check_unprefixed_options(options: Sequence[MethodOption], accepted: Mapping[str, Iterable[str]]) -> None:
    """Refuse an unprefixed option that none of the methods accepts (a typo would otherwise go unnoticed).

    Raises:
        ValueError: naming the option and the keys each method accepts.
    """
    known = {k for keys in accepted.values() for k in keys}
    for o in options:
        if o.method is None and o.key not in known:
            from agg2exp_lightning.utils import did_you_mean

            raise ValueError(f"--method-option {o.key}={o.value!r}: no method here accepts {o.key!r}; accepted: {sorted(known)}"
                             f"{did_you_mean(o.key, known)}")

"""This toolkit's Lightning checkpoints: the :class:`~agg2exp_lightning.model.SegmentationModule` for
auditing and explaining, and the check that training can resume from one."""
from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading.checkpoints import UNREADABLE, load_weights_only, state_dict_mismatch

log = logging.getLogger(__name__)

#: Hyper-parameters that decide the network's shape (named when a checkpoint does not fit a model).
SHAPE_HPARAMS = ("num_classes", "in_channels", "feature_size", "depths", "num_heads", "norm_name", "use_v2")
#: State-dict entries that are training state, not the network (the loss's class weights, set when fitting starts).
TRAINING_STATE_PREFIXES = ("loss.",)
#: What a checkpoint needs to continue training from.
RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "global_step")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def is_toolkit_checkpoint(obj: Any) -> bool:
    """Whether a loaded file looks like a :class:`SegmentationModule` checkpoint."""
    return isinstance(obj, Mapping) and "state_dict" in obj and "hyper_parameters" in obj


def checkpoint_spacing(ckpt: Mapping[str, Any]) -> tuple[float, ...] | None:
    """The training spacing stored with the data module's hyper-parameters, if any."""
    spacing = dict(ckpt.get("datamodule_hyper_parameters") or {}).get("spacing")
    try:
        return tuple(float(s) for s in spacing) if spacing is not None else None
    except (TypeError, ValueError):
        return None


def segmentation_module_from_checkpoint(
    ckpt: Mapping[str, Any], *, where: str, num_classes: int | None = None, in_channels: int | None = None
) -> Any:
    """Build a :class:`~agg2exp_lightning.model.SegmentationModule` from a loaded checkpoint, in eval mode.

    Args:
        ckpt: what :func:`~agg2exp_lightning.model_loading.checkpoints.read_weights_file` returned.
        where: the file, as messages name it.
        num_classes / in_channels: what the caller needs; a checkpoint for another number is refused.

    Raises:
        DataError: not a checkpoint of this module, for another number of classes or channels, or
            weights that do not fit the hyper-parameters (naming the keys and shapes).
    """
    from agg2exp_lightning.model import SegmentationModule

    if not is_toolkit_checkpoint(ckpt):
        raise DataError(f"checkpoint {where}: expected a Lightning checkpoint with 'state_dict' and 'hyper_parameters'")
    accepted = set(inspect.signature(SegmentationModule.__init__).parameters) - {"self"}
    hparams = {k: v for k, v in dict(ckpt["hyper_parameters"]).items() if k in accepted}
    for name, wanted in (("num_classes", num_classes), ("in_channels", in_channels)):
        if wanted is not None and hparams.get(name) != wanted:
            raise DataError(f"checkpoint {where} is for {name}={hparams.get(name)}, expected {name}={wanted}")
    try:
        module = SegmentationModule(**hparams)
    except (TypeError, ValueError) as err:
        raise DataError(f"checkpoint {where}: its hyper-parameters do not build a SegmentationModule: {str(err).splitlines()[0][:300]}") from err
    state = {k: v for k, v in dict(ckpt["state_dict"]).items() if not str(k).startswith(TRAINING_STATE_PREFIXES)}
    detail = state_dict_mismatch(state, module.state_dict(), ignore_prefixes=TRAINING_STATE_PREFIXES)
    if detail:
        raise DataError(f"checkpoint {where}: expected the weights of the Swin-UNETR SegmentationModule its "
                        f"hyper-parameters describe, but they do not fit: {detail}")
    module.load_state_dict(state, strict=False)  # strict on the network: the mismatch check above
    return module.eval()


def load_segmentation_checkpoint(
    path: str | Path, *, num_classes: int | None = None, in_channels: int | None = None, map_location: str = "cpu"
) -> Any:
    """Load a :class:`~agg2exp_lightning.model.SegmentationModule` from a Lightning checkpoint without unpickling arbitrary objects.

    Args:
        path: a ``.ckpt`` written by this toolkit's training.
        num_classes / in_channels: what the caller needs; a checkpoint for another number is refused.
        map_location: device to load the weights to.

    Returns:
        The module in eval mode.

    Raises:
        DataError: the file is missing, corrupt, not a checkpoint of this module, or for another number
            of classes or channels.
    """
    from agg2exp_lightning.model_loading.checkpoints import read_weights_file

    ckpt = read_weights_file(path, what="checkpoint", map_location=map_location)
    return segmentation_module_from_checkpoint(ckpt, where=str(path), num_classes=num_classes, in_channels=in_channels)


def read_lightning_checkpoint(path: str | Path, needed: tuple[str, ...] = ("state_dict",), *, purpose: str = "load",
                              advice: str = "") -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True`` (memory-mapped where possible) that holds ``needed``.

    Args:
        path: the checkpoint.
        needed: top-level keys it must hold (e.g. :data:`RESUME_KEYS`).
        purpose: what it is read for, in the messages (``"resume from"``, ``"validate"``).
        advice: what the user can do instead, appended to the messages.

    Raises:
        DataError: unreadable (truncated, not a torch file, pickled objects other than tensors and plain
            containers) or lacking one of ``needed``; the message names ``path``.
    """
    p = Path(path)
    tail = f" {advice}" if advice else ""
    if not p.is_file():
        raise DataError(f"cannot {purpose} checkpoint {p}: it does not exist or is not a file.{tail}")
    ckpt, error = load_weights_only(p)
    if error is not None:
        raise DataError(f"cannot {purpose} checkpoint {p}: it cannot be read with weights_only=True ({error}): {UNREADABLE}.{tail}")
    missing = [k for k in needed if not (isinstance(ckpt, Mapping) and k in ckpt)]
    if missing:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise DataError(f"cannot {purpose} checkpoint {p}: expected a Lightning checkpoint with {list(needed)}, "
                        f"but it lacks {missing} (found {found}).{tail}")
    return dict(ckpt)


def check_resume_checkpoint(path: str | Path, model: Any) -> None:
    """Refuse, naming ``path``, a checkpoint that training of ``model`` cannot continue from.

    Read with ``weights_only=True`` and memory-mapped where possible, so checking a large file costs little.

    Raises:
        DataError: the file is unreadable (truncated, not a torch file, or holding pickled objects other
            than tensors and plain containers), not a Lightning training checkpoint (e.g. a bare
            ``state_dict``: no optimiser or loop state), or the weights of another model (the differing
            hyper-parameters named, else the keys and shapes).
    """
    p = Path(path)
    ckpt = read_lightning_checkpoint(
        p, RESUME_KEYS, purpose="resume from",
        advice="A bare state_dict or a weights-only checkpoint holds no optimiser or loop state to continue from. Pass "
               "--resume never to start over (overwriting it) or --resume PATH for another checkpoint.")
    detail = state_dict_mismatch(ckpt["state_dict"], model.state_dict(), ignore_prefixes=TRAINING_STATE_PREFIXES, limit=3)
    if detail:
        hp_theirs = dict(ckpt.get("hyper_parameters") or {})
        hp_ours = dict(getattr(model, "hparams", {}) or {})
        differ = [f"{k}={hp_theirs.get(k)!r} in the checkpoint, {hp_ours.get(k)!r} configured"
                  for k in SHAPE_HPARAMS if k in hp_theirs and _plain(hp_theirs.get(k)) != _plain(hp_ours.get(k))]
        raise DataError(
            f"cannot resume from checkpoint {p}: it holds the weights of another model than the one configured "
            f"({'; '.join(differ) or detail}). Use the configuration it was trained with, or --resume never to start over."
        )

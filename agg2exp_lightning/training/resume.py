"""Which checkpoint a run continues from, and whether it can: read safely, of this model, with loop state."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from agg2exp_lightning.training.errors import TrainingError

__all__ = ["check_resume_checkpoint", "read_checkpoint", "resume_checkpoint"]

#: Hyper-parameters that decide the network's shape (named when a checkpoint does not fit the configured model).
SHAPE_HPARAMS = ("num_classes", "in_channels", "feature_size", "depths", "num_heads", "norm_name", "use_v2")
#: What a checkpoint needs to continue training from it.
TRAINING_KEYS = ("state_dict", "optimizer_states", "loops", "global_step")


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


def read_checkpoint(path: str | Path, needed: tuple[str, ...], purpose: str, advice: str) -> dict[str, Any]:
    """A checkpoint read with ``weights_only=True`` (memory-mapped where possible) that holds ``needed``.

    Args:
        path: the checkpoint.
        needed: top-level keys it must hold.
        purpose: what it is read for, in the messages (``"resume from"``, ``"validate"``).
        advice: what the user can do instead, appended to the messages.

    Raises:
        TrainingError: unreadable (truncated, not a torch file, pickled objects other than tensors and plain
            containers) or lacking one of ``needed``; the message names ``path``.
    """
    import torch

    p = Path(path)
    ckpt, errors = None, []
    for mmap in (True, False):  # mmap needs the zip format; an old-format file is read whole
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as err:  # noqa: BLE001 - whatever fails, the file cannot be used
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            errors.append(f"{type(err).__name__}: {first}")
    if ckpt is None:
        raise TrainingError(
            f"cannot {purpose} checkpoint {p}: it cannot be read with weights_only=True ({errors[-1]}). It is "
            "truncated or corrupt, not a torch checkpoint, or holds pickled objects other than tensors and plain "
            f"containers (never unpickled here). {advice}"
        )
    missing = [k for k in needed if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise TrainingError(
            f"cannot {purpose} checkpoint {p}: expected a Lightning checkpoint with {list(needed)}, "
            f"but it lacks {missing} (found {found}). {advice}"
        )
    return ckpt


def check_resume_checkpoint(path: str | Path, model: Any) -> None:
    """Refuse, with a message naming ``path``, a checkpoint that training cannot continue from.

    The file is read with ``weights_only=True`` (nothing but tensors and plain containers is ever
    unpickled) and memory-mapped where possible, so checking a large checkpoint costs little.

    Raises:
        TrainingError: the file is unreadable (truncated, not a torch file, or holding pickled objects
            other than tensors and plain containers), is not a Lightning training checkpoint (e.g. a bare
            ``state_dict``: no optimiser or loop state to continue from), or holds the weights of another
            model (the differing hyper-parameters named).
    """
    p = Path(path)
    ckpt = read_checkpoint(
        p, TRAINING_KEYS, "resume from",
        "A bare state_dict or a weights-only checkpoint holds no optimiser or loop state to continue from. Pass "
        "--resume never to start over (overwriting it) or --resume PATH for another checkpoint.",
    )
    # the loss's class weights are set when fitting starts (after this check) and are not the model's weights
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape") and not k.startswith("loss.")}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("loss.")}
    if theirs == ours:
        return
    hp_theirs = dict(ckpt.get("hyper_parameters") or {})
    hp_ours = dict(getattr(model, "hparams", {}) or {})
    differ = [
        f"{k}={hp_theirs.get(k)!r} in the checkpoint, {hp_ours.get(k)!r} configured"
        for k in SHAPE_HPARAMS
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

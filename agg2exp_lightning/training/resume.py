"""Which checkpoint a run continues from, and whether it can: read safely, of this model, with loop state."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.training.errors import TrainingError

__all__ = ["check_resume_checkpoint", "read_checkpoint", "resume_checkpoint"]



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


def read_checkpoint(path: str | Path, needed: tuple[str, ...], purpose: str, advice: str) -> dict[str, Any]:
    """A checkpoint read with ``weights_only=True`` (memory-mapped where possible) that holds ``needed``:
    :func:`agg2exp_lightning.model_loading.read_lightning_checkpoint`, the toolkit's one checkpoint reader.

    Args:
        path: the checkpoint.
        needed: top-level keys it must hold.
        purpose: what it is read for, in the messages (``"resume from"``, ``"validate"``).
        advice: what the user can do instead, appended to the messages.

    Raises:
        TrainingError: unreadable (truncated, not a torch file, pickled objects other than tensors and plain
            containers) or lacking one of ``needed``; the message names ``path``.
    """
    from agg2exp_lightning.model_loading import read_lightning_checkpoint

    try:
        return read_lightning_checkpoint(path, needed, purpose=purpose, advice=advice)
    except DataError as err:
        raise TrainingError(str(err)) from err


def check_resume_checkpoint(path: str | Path, model: Any) -> None:
    """Refuse, with a message naming ``path``, a checkpoint that training cannot continue from
    (:func:`agg2exp_lightning.model_loading.check_resume_checkpoint`).

    Raises:
        TrainingError: the file is unreadable (truncated, not a torch file, or holding pickled objects
            other than tensors and plain containers), is not a Lightning training checkpoint (e.g. a bare
            ``state_dict``: no optimiser or loop state to continue from), or holds the weights of another
            model (the differing hyper-parameters named, else the keys and shapes).
    """
    from agg2exp_lightning.model_loading import check_resume_checkpoint as check

    try:
        check(path, model)
    except DataError as err:
        raise TrainingError(str(err)) from err

"""Which scans the audit compares against by default, and what that choice promises.

The scan-level flag's false-positive bound holds for clean scans **exchangeable** with the reference
scans (drawn from the same population and treated the same way). The model's training scans are not:
the model has fitted them, so their explanations and predictions are more typical than those of unseen
clean scans, and unseen scans then look anomalous more often than the bound says. A held-out split
(validation, never trained on) is the reference that matches the claim; the training split is used
only when the data has no other split besides the audited one, with a note saying so.
"""
from __future__ import annotations

from collections.abc import Collection

__all__ = ["HELD_OUT_SPLITS", "TRAINING_REFERENCE_NOTE", "choose_reference_split"]

#: Held-out split names, in the order they are preferred as the reference.
HELD_OUT_SPLITS = ("val", "validation", "valid", "test")
#: The note written into ``summary.json`` and the report when the training split is the reference.
TRAINING_REFERENCE_NOTE = (
    "the reference is the training split ('{split}'): the flag's false-positive bound assumes the audited "
    "clean scans are exchangeable with the reference scans, which the model's own training scans are not "
    "(it has fitted them, so unseen clean scans may be flagged more often than the bound); give a held-out "
    "split with --reference-split when the data has one"
)


def choose_reference_split(audited: str, splits: Collection[str]) -> tuple[str | None, str | None]:
    """The default reference split (``--reference-split auto``) and a note when it weakens the bound.

    Args:
        audited: the audited split.
        splits: the splits the data has.

    Returns:
        ``(split, note)``: the first held-out split of :data:`HELD_OUT_SPLITS` other than the audited
        one; else ``"train"`` with :data:`TRAINING_REFERENCE_NOTE`; else ``(None, None)`` (the
        audited scans are their own reference).

    Example:
        >>> choose_reference_split("test", {"train", "val", "test"})
        ('val', None)
        >>> choose_reference_split("test", {"train", "test"})[0]
        'train'
    """
    available = set(splits) - {audited}
    for name in HELD_OUT_SPLITS:
        if name in available:
            return name, None
    if "train" in available:
        return "train", TRAINING_REFERENCE_NOTE.format(split="train")
    return None, None

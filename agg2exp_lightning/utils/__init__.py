"""Small helpers shared by every layer of the toolkit: one home for each.

- :mod:`~agg2exp_lightning.utils.files`: atomic writes (bytes, text, JSON, a writer callback), file hashes,
  fingerprints, removal of temporaries left by killed writes.
- :mod:`~agg2exp_lightning.utils.options`: validated choices with a "did you mean" (after MONAI's
  ``look_up_option``), positive integers and non-negative numbers named in their messages.
- :mod:`~agg2exp_lightning.utils.tensors`: a plain tensor out of a MONAI ``MetaTensor``.

This package imports nothing heavier than numpy at import time, so every layer (data, explain,
analysis, audit, callbacks, training) can depend on it without cycles.
"""
from __future__ import annotations

from agg2exp_lightning.utils.files import (
    TEMPORARY_PATTERN,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    fingerprint,
    remove_temporaries,
)
from agg2exp_lightning.utils.options import did_you_mean, look_up_option, nearest, nonnegative_float, positive_int
from agg2exp_lightning.utils.tensors import plain_tensor, tensor_argument

__all__ = [
    "TEMPORARY_PATTERN",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "did_you_mean",
    "file_sha256",
    "fingerprint",
    "look_up_option",
    "nearest",
    "nonnegative_float",
    "plain_tensor",
    "positive_int",
    "remove_temporaries",
    "tensor_argument",
]

"""Lightning's ``Trainer`` with ``precision="auto"``: bfloat16 autocast only where the hardware runs it natively.

bf16 mixed precision made a demo training step 1.3-1.5x faster on a CPU with AVX512_BF16, and about 20x
slower on one without (PyTorch emulates it there): no single setting is right for every CPU, so the
default decides by capability (:func:`agg2exp_lightning.utils.hardware.choose_precision`) and says which
it picked and why, in the log and in ``<run>/hardware.json``.
"""
from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Trainer

from agg2exp_lightning.utils.hardware import PrecisionChoice, choose_precision, lightning_precision_values

log = logging.getLogger(__name__)

__all__ = ["AutoPrecisionTrainer", "resolve_trainer_precision"]


def resolve_trainer_precision(precision: str | int | None, accelerator: Any) -> PrecisionChoice:
    """What ``Trainer(precision=precision, accelerator=accelerator)`` will compute in, and why.

    Raises:
        ValueError: ``precision`` is not a value Lightning knows (the message lists them), or asks for
            bfloat16 on a CUDA device without it (the message says what the device supports).
    """
    asked = "auto" if precision is None else str(precision)
    known = lightning_precision_values()
    if asked not in known:
        raise ValueError(f"--trainer.precision {asked!r} is not a precision Lightning knows; expected one of {', '.join(known)}")
    try:
        choice = choose_precision(asked, accelerator, style="lightning")
    except ValueError as err:
        raise ValueError(f"--trainer.{err}" if str(err).startswith("precision") else str(err)) from None
    return choice


class AutoPrecisionTrainer(Trainer):
    """``lightning.Trainer`` whose ``precision`` also takes ``"auto"`` (the default).

    Args:
        precision: ``"auto"``: ``"bf16-mixed"`` where the device runs bfloat16 natively (a CUDA device that
            supports it; a CPU with AVX512_BF16 or AMX), ``"32-true"`` elsewhere. Any value Lightning takes
            is obeyed as given (``"bf16-mixed"`` on a CPU without native bfloat16 with a warning: it is
            emulated and much slower).
        accelerator: as Lightning's.
        **kwargs: every other ``Trainer`` argument.

    Attributes:
        precision_choice: what was asked, what runs and why.
    """

    def __init__(self, *args: Any, accelerator: Any = "auto", precision: str | int | None = "auto", **kwargs: Any) -> None:
        self.precision_choice = resolve_trainer_precision(precision, accelerator)
        used = self.precision_choice.used
        super().__init__(*args, accelerator=accelerator, precision=int(used) if used.isdigit() else used, **kwargs)

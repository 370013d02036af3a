"""The Dice table of a run: per-class mean Dice over scans, as Markdown and as numbers."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from agg2exp_lightning.segmentation_metrics import mean_dice_per_class

__all__ = ["dice_table"]


def dice_table(class_names: Sequence[str], per_scan: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """Markdown table of per-class Dice (NaN-aware mean over scans) and the dict behind it.

    The first class is the background: ``mean_foreground`` averages the others that are defined.

    Args:
        class_names: ``C`` names, background first.
        per_scan: subject id -> ``[C]`` Dice (:func:`~agg2exp_lightning.segmentation_metrics.dice_per_class`).

    Returns:
        ``(markdown, {class name: mean Dice, ..., "mean_foreground": value})``.

    Example:
        >>> import torch
        >>> table, means = dice_table(["background", "organ"], {"s1": torch.tensor([1.0, 0.5])})
        >>> means["mean_foreground"]
        0.5
    """
    per_class = mean_dice_per_class(per_scan, len(class_names))
    means = {name: float(per_class[i]) for i, name in enumerate(class_names)}
    lines = ["| class | Dice |", "|---|---|"] + [f"| {name} | {value:.3f} |" for name, value in means.items()]
    fg = [v for k, v in means.items() if k != class_names[0] and not math.isnan(v)]
    means["mean_foreground"] = sum(fg) / len(fg) if fg else math.nan
    lines.append(f"| **mean foreground** | **{means['mean_foreground']:.3f}** |")
    return "\n".join(lines) + f"\n\n({len(per_scan)} scans)\n", means

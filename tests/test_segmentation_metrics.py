"""Dice per class against torchmetrics and MONAI on the same label maps."""
from __future__ import annotations

import math

import torch

from agg2exp_lightning.segmentation_metrics import dice_per_class


def test_dice_matches_torchmetrics_and_monai():
    from monai.metrics import compute_dice
    from torchmetrics.functional.segmentation import dice_score

    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (12, 10, 8), generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target, torch.randint(0, 5, target.shape, generator=g))
    ours = dice_per_class(pred, target, 5)
    tm = dice_score(pred[None], target[None], num_classes=5, average="none", input_format="index")[0]
    torch.testing.assert_close(ours.float(), tm.float())
    onehot = lambda x: torch.nn.functional.one_hot(x, 5).permute(3, 0, 1, 2)[None].float()  # noqa: E731
    mo = compute_dice(onehot(pred), onehot(target), include_background=True)[0]
    torch.testing.assert_close(ours.float(), mo.float())


def test_dice_absent_class_is_nan_and_one_sided_is_zero():
    d = dice_per_class(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 2]), 4)
    assert d[0] == 1.0 and d[1] == 0.0 and d[2] == 0.0 and math.isnan(d[3])

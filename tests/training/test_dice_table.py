"""Known answers for the Dice table: per-class Dice hand-computed on tiny label volumes."""
from __future__ import annotations

import math

import pytest
import torch

from agg2exp_lightning.segmentation_metrics import dice_per_class, mean_dice_per_class
from agg2exp_lightning.training.dice_table import dice_table

NAMES = ["background", "lung", "heart", "ribs", "never_seen"]


def _scans() -> dict[str, torch.Tensor]:
    # Scan A (2x2x1 voxels): target 0 1 / 1 2, prediction 0 1 / 2 2
    #   background: |P|=1, |T|=1, overlap 1 -> 1;  lung: |P|=1, |T|=2, overlap 1 -> 2/3
    #   heart: |P|=2, |T|=1, overlap 1 -> 2/3;     ribs, never_seen: absent from both -> undefined
    a = dice_per_class(torch.tensor([[[0], [1]], [[2], [2]]]), torch.tensor([[[0], [1]], [[1], [2]]]), 5)
    # Scan B: target 0 0 / 3 3, prediction 0 0 / 0 3
    #   background: |P|=3, |T|=2, overlap 2 -> 4/5;  ribs: |P|=1, |T|=2, overlap 1 -> 2/3;  lung, heart: undefined
    b = dice_per_class(torch.tensor([[[0], [0]], [[0], [3]]]), torch.tensor([[[0], [0]], [[3], [3]]]), 5)
    return {"A": a, "B": b}


def test_per_scan_dice_by_hand():
    scans = _scans()
    assert torch.allclose(scans["A"][:3], torch.tensor([1.0, 2 / 3, 2 / 3], dtype=torch.float64))
    assert scans["A"][3:].isnan().all()
    assert scans["B"][0] == pytest.approx(0.8) and scans["B"][3] == pytest.approx(2 / 3)
    assert scans["B"][1:3].isnan().all() and scans["B"][4].isnan()


def test_dice_table_means_over_the_scans_where_a_class_is_defined():
    table, means = dice_table(NAMES, _scans())
    assert means["background"] == pytest.approx(0.9)  # (1 + 0.8) / 2
    assert means["lung"] == pytest.approx(2 / 3)  # scan A only: undefined in B, not counted as 0
    assert means["heart"] == pytest.approx(2 / 3)
    assert means["ribs"] == pytest.approx(2 / 3)  # scan B only
    assert math.isnan(means["never_seen"])
    assert means["mean_foreground"] == pytest.approx(2 / 3)  # background and undefined classes left out
    assert "| background | 0.900 |" in table and "| lung | 0.667 |" in table and "| never_seen | nan |" in table
    assert "| **mean foreground** | **0.667** |" in table and "(2 scans)" in table


def test_no_scans_and_wrong_class_count():
    table, means = dice_table(NAMES[:2], {})
    assert math.isnan(means["background"]) and math.isnan(means["mean_foreground"]) and "(0 scans)" in table
    assert mean_dice_per_class({}, 3).isnan().all()
    with pytest.raises(ValueError, match="Dice of 2 classes, but got 5"):
        mean_dice_per_class(_scans(), 2)

"""The module's per-scan validation Dice: known answers, and every rank's scans kept once."""
from __future__ import annotations

import pytest
import torch

from agg2exp_lightning.model import SegmentationModule
from agg2exp_lightning.utils import distributed


@pytest.fixture
def module(monkeypatch):
    torch.manual_seed(0)
    m = SegmentationModule(num_classes=3, feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32),
                           class_names=["background", "organ", "bone"])
    # the network's logits are replaced by a planted prediction: argmax = the label map given as "image"
    monkeypatch.setattr(m, "predict_logits", lambda image: torch.nn.functional.one_hot(image[:, 0].long(), 3)
                        .permute(0, 4, 1, 2, 3).float())
    return m


def _batch(pred, label, sid):
    return {"image": torch.tensor(pred)[None, None], "label": torch.tensor(label)[None, None].float(), "subject_id": [sid]}


def test_validation_step_records_hand_computed_dice(module):
    # prediction 0 1 / 2 2, labels 0 1 / 1 2 (2x2x1): background 1, organ 2*1/(1+2), bone 2*1/(2+1)
    module.on_validation_epoch_start()
    module.validation_step(_batch([[[0], [1]], [[2], [2]]], [[[0], [1]], [[1], [2]]], "s1"), 0)
    assert torch.allclose(module.last_val_dice["s1"], torch.tensor([1.0, 2 / 3, 2 / 3], dtype=torch.float64))


def test_every_ranks_scans_are_kept_and_a_padded_repeat_once(module, monkeypatch):
    """What ``gather_objects`` returns under two ranks: rank 1 holds s2 and a repeat of s1 (DistributedSampler's
    padding), whose value must not replace rank 0's."""
    other_rank = [("s2", torch.tensor([0.5, 0.25, float("nan")], dtype=torch.float64)),
                  ("s1", torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))]
    monkeypatch.setattr(distributed, "gather_objects", lambda mine: [mine, other_rank])
    module.on_validation_epoch_start()
    out = module.validation_step(_batch([[[0], [1]], [[2], [2]]], [[[0], [1]], [[1], [2]]], "s1"), 0)
    assert list(out) == ["s1"]  # the step returns this rank's own scans
    assert sorted(module.last_val_dice) == ["s1", "s2"]
    assert torch.allclose(module.last_val_dice["s1"], torch.tensor([1.0, 2 / 3, 2 / 3], dtype=torch.float64))
    assert module.last_val_dice["s2"][2].isnan()


def test_gather_objects_without_a_process_group_is_the_object_alone():
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]


def test_a_checkpoint_with_data_derived_class_weights_loads_strictly_for_evaluation():
    """Fitted with class_weights="inverse_..." the loss holds weights set at fit start; a module built from the
    same settings to validate/test/predict takes them from the checkpoint."""
    kwargs = dict(num_classes=3, feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32))
    fitted = SegmentationModule(**kwargs, class_weights=[1.0, 2.0, 3.0])
    fresh = SegmentationModule(**kwargs, class_weights="inverse_sqrt_frequency")
    checkpoint = {"state_dict": fitted.state_dict()}
    assert fresh.loss.cross_entropy.weight is None
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert torch.equal(fresh.loss.cross_entropy.weight, torch.tensor([1.0, 2.0, 3.0]))

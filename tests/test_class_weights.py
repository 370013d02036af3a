"""Class-weighted DiceCE: weights from label frequencies, known answers, and their use in training."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agg2exp_lightning.class_weights import class_weights
from agg2exp_lightning.data.datamodule import ThoraxDataModule
from agg2exp_lightning.model import SegmentationModule
from agg2exp_lightning.model_loading import load_segmentation_checkpoint
from agg2exp_lightning.training import train

NO_MONITORS = ("--config", str(Path(__file__).parent / "configs" / "checkpoints_only.yaml"))


def test_known_weights():
    # frequencies 0.81, 0.09, 0.09, 0.01: inverse square roots 10/9, 10/3, 10/3, 10 with
    # sum f w = 0.9 + 0.3 + 0.3 + 0.1 = 1.6, so divided by 1.6: 25/36, 25/12, 25/12, 25/4
    w = class_weights([81, 9, 9, 1], "inverse_sqrt_frequency")
    torch.testing.assert_close(w, torch.tensor([25 / 36, 25 / 12, 25 / 12, 25 / 4]))
    # frequencies 0.64, 0.32, 0.04: inverse square roots 1.25, 1.7678, 5; sum f w = 0.8 + 0.5657 + 0.2 = 1.5657
    w = class_weights([64, 32, 4], "inverse_sqrt_frequency")
    torch.testing.assert_close(w, torch.tensor([0.79837, 1.12907, 3.19349]), rtol=0, atol=2e-5)
    assert float((w.double() * torch.tensor([0.64, 0.32, 0.04], dtype=torch.float64)).sum()) == pytest.approx(1.0)
    # inverse frequency equalises the classes' total weight; an absent class gets the largest weight
    w = class_weights([75, 25, 0], "inverse_frequency")
    torch.testing.assert_close(w, torch.tensor([2 / 3, 2.0, 2.0]))
    # equal counts: uniform weights of 1
    torch.testing.assert_close(class_weights([5, 5, 5, 5]), torch.ones(4))


@pytest.mark.parametrize("counts", [[0, 0], [1, -1], [1, float("nan")], []])
def test_bad_counts_are_named(counts):
    with pytest.raises(ValueError, match="`counts`"):
        class_weights(counts)


def test_bad_scheme_and_weights_are_named():
    with pytest.raises(ValueError, match="`scheme`"):
        class_weights([1, 2], "median")
    with pytest.raises(ValueError, match="`class_weights`"):
        SegmentationModule(num_classes=3, feature_size=12, depths=(1, 1, 1, 1), class_weights="balanced")
    with pytest.raises(ValueError, match="`class_weights` to hold 3"):
        SegmentationModule(num_classes=3, feature_size=12, depths=(1, 1, 1, 1), class_weights=[1.0, 2.0])
    module = SegmentationModule(num_classes=3, feature_size=12, depths=(1, 1, 1, 1), class_weights=[1.0, 2.0, 3.0])
    torch.testing.assert_close(module.loss.cross_entropy.weight, torch.tensor([1.0, 2.0, 3.0]))


def test_label_voxel_counts_equal_a_count_of_the_preprocessed_volumes(tiny_cohort):
    dm = ThoraxDataModule(str(tiny_cohort), spacing=(8, 8, 8), roi_size=(32, 32, 32))
    counts = dm.label_voxel_counts()
    reference = torch.zeros(17, dtype=torch.float64)
    volumes = dm.whole_volume_dataset("train")
    for i in range(len(volumes)):
        reference += torch.bincount(volumes[i]["label"].as_tensor().long().flatten(), minlength=17).double()
    torch.testing.assert_close(counts, reference)
    assert bool((counts[1:] > 0).all())  # every thorax label occurs in the synthetic training scans


def test_fit_uses_weights_from_the_training_labels_and_the_checkpoint_loads(tiny_cohort, tiny_model_args, tmp_path):
    run = tmp_path / "run"
    train(["demo", f"--data.data_root={tiny_cohort}", "--data.spacing=[8.0, 8.0, 8.0]", "--data.roi_size=[32, 32, 32]",
                 *tiny_model_args, "--model.class_weights=inverse_sqrt_frequency", f"--trainer.default_root_dir={run}",
                 f"--trainer.logger.init_args.save_dir={run}", *NO_MONITORS, "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2"])
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    expected = class_weights(ThoraxDataModule(str(tiny_cohort), spacing=(8, 8, 8)).label_voxel_counts())
    torch.testing.assert_close(ckpt["state_dict"]["loss.cross_entropy.weight"], expected)
    assert ckpt["hyper_parameters"]["class_weights"] == "inverse_sqrt_frequency"
    module = load_segmentation_checkpoint(last, num_classes=17)  # the loss weights are not required
    assert module.loss.cross_entropy.weight is None

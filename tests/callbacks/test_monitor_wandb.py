"""W&B as its users expect, read back from the offline run's own file: epoch axis, best Dice in the summary,
overlays with toggleable masks, and the monitor's NIfTI maps."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monitor_helpers import TinySegmenter, loaders, make_trainer, scans  # noqa: I001 - beside this file
from torch.utils.data import DataLoader

from agg2exp_lightning.callbacks import ExplanationMonitor
from agg2exp_lightning.loggers import OfflineFirstWandbLogger
from agg2exp_lightning.wandb_files import find_offline_runs, read_offline_run

DICE = [0.5, 0.8, 0.6]  # scripted validation Dice per epoch: best 0.8 at epoch 1, last 0.6


class ScriptedDice(TinySegmenter):
    def on_validation_epoch_end(self):
        self.log("val/mean_dice_fg", DICE[self.current_epoch])
        self.log("val/dice/organ", DICE[self.current_epoch] / 2)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_epoch_axis_best_dice_and_masked_overlays_are_in_the_offline_run(offline):
    import wandb

    logger = OfflineFirstWandbLogger(save_dir=str(offline), project="agg2exp-test")
    monitor = ExplanationMonitor(every_n_epochs=1, num_scans=2, targets=["organ", "bone"], overlay_classes=["organ"],
                                 at_train_end=False)
    trainer = make_trainer(offline, [monitor], max_epochs=3)
    trainer.loggers = [logger]
    trainer.fit(ScriptedDice(), *loaders())
    logger.experiment.finish()
    wandb.teardown()  # waits until the run file is written
    (path,) = find_offline_runs(offline)
    run = read_offline_run(path)

    steps = {m["name"]: m["step_metric"] for m in run["metrics"]}
    assert steps["val/*"] == "epoch" and steps["agg2exp/*"] == "epoch" and steps["val/mean_dice_fg"] == "epoch"
    dice_rows = [r for r in run["history"] if "val/mean_dice_fg" in r]
    assert [r["epoch"] for r in dice_rows] == [0, 1, 2]
    assert [r["val/mean_dice_fg"] for r in dice_rows] == pytest.approx(DICE)
    assert run["summary"]["val/mean_dice_fg"] == pytest.approx({"max": 0.8, "last": 0.6})
    assert run["summary"]["val/dice/organ"] == pytest.approx({"max": 0.4, "last": 0.3})

    overlays = [r for r in run["history"] if "agg2exp/overlay_masks/_type" in r]  # nested keys joined by "/"
    assert len(overlays) == 3 and all(r["epoch"] == e for e, r in enumerate(overlays))
    last = overlays[-1]
    assert last["agg2exp/overlay_masks/_type"] == "images/separated" and last["agg2exp/overlay_masks/count"] == 1
    (masks,) = last["agg2exp/overlay_masks/all_masks"]
    assert set(masks) == {"prediction", "top_attribution"}  # two masks the W&B UI can toggle
    assert masks["prediction"]["_type"] == "mask"
    # a readable size in the W&B panel: the small test slice is enlarged to a shorter side of at least 256 pixels
    assert min(last["agg2exp/overlay_masks/width"], last["agg2exp/overlay_masks/height"]) >= 256
    own = [r for r in run["history"] if "agg2exp/own_share/organ" in r]
    assert [r["epoch"] for r in own] == [0, 1, 2]


def _meta_scans(n: int) -> list[dict]:
    """The monitor test scans as this toolkit's loader leaves them: MetaTensors that know their file's grid.
    The file is stored x-flipped (LPS-like) with 2 mm voxels; the model's grid is RAS."""
    from monai.data import MetaTensor

    ras = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    original = torch.diag(torch.tensor([-2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    original[0, 3] = 14.0  # file voxel 7 is model voxel 0 (x = 0 mm)
    items = scans(n, 2)
    for item in items:
        item["image"] = MetaTensor(item["image"], affine=ras.clone(),
                                   meta={"original_affine": original.clone(), "spatial_shape": torch.tensor([8, 8, 8])})
    return items


def test_the_monitor_writes_maps_in_the_scans_own_grid(tmp_path):
    from agg2exp_lightning.audit.maps import map_paths

    val = DataLoader(_meta_scans(2), batch_size=1)
    monitor = ExplanationMonitor(every_n_epochs=1, num_scans=2, targets=["organ"], at_train_end=False, save_maps=True)
    module = TinySegmenter()
    make_trainer(tmp_path, [monitor], max_epochs=1).fit(module, loaders()[0], val)
    folder = next(tmp_path.rglob("maps/epoch000"))
    assert (folder / "labels_itksnap.txt").is_file()
    for item in _meta_scans(2):
        paths = map_paths(folder, item["subject_id"], ["organ"])
        prediction = nib.load(paths["prediction"])
        assert np.allclose(prediction.affine, item["image"].meta["original_affine"].numpy())
        expected = module.net(item["image"].as_tensor()[None]).argmax(1)[0].numpy()[::-1]  # back to the file's x order
        np.testing.assert_array_equal(np.asarray(prediction.dataobj), expected)
        assert nib.load(paths["organ"]).shape == (8, 8, 8)


def test_overlay_scale_enlarges_the_issues_52_by_63_slice_by_a_whole_factor():
    from agg2exp_lightning.callbacks._plumbing import _repeat, overlay_scale

    assert overlay_scale((52, 63)) == 5 and overlay_scale((300, 400)) == 1 and overlay_scale((256, 1)) == 256
    a = np.arange(6).reshape(2, 3)
    grown = _repeat(a, 2)
    assert grown.shape == (4, 6) and (grown[::2, ::2] == a).all() and (grown[1::2, 1::2] == a).all()

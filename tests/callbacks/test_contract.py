"""The monitors' written contract: results passed explicitly, two monitors of one kind in one checkpoint,
and a model that offers only what the contract requires."""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from monitor_helpers import CLASSES, TinySegmenter, loaders, make_trainer  # noqa: I001 - beside this file
from torch import nn

from agg2exp_lightning.callbacks import (
    AnomalyCheck,
    AnomalyMonitor,
    BiasMonitor,
    ExplanationCheck,
    ExplanationConsumer,
    ExplanationMonitor,
)
from agg2exp_lightning.callbacks.contract import class_names_of, explained_network, per_scan_dice
from agg2exp_lightning.explain import explain


class Recorder(Callback):
    """A third-party consumer: receives every check through the public hooks only."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source
        self.explanations: list[ExplanationCheck] = []
        self.anomalies: list[AnomalyCheck] = []

    def on_explanations(self, trainer, pl_module, check):
        self.explanations.append(check)

    def on_anomalies(self, trainer, pl_module, check):
        self.anomalies.append(check)


def test_checks_reach_any_consumer_with_everything_it_needs(tmp_path):
    recorder = Recorder()
    assert isinstance(recorder, ExplanationConsumer)
    callbacks = [ExplanationMonitor(every_n_epochs=1, num_scans=4, targets=["bone", "organ"], at_train_end=False),
                 AnomalyMonitor(), recorder]
    make_trainer(tmp_path, callbacks, max_epochs=2).fit(TinySegmenter(), *loaders())
    assert [c.epoch for c in recorder.explanations] == [0, 1]
    check = recorder.explanations[-1]
    assert check.target_ids == [2, 1] and check.target_names == ["bone", "organ"] and check.region_names == CLASSES
    assert check.roi.shape == (4, 2, 3)
    assert [c.epoch for c in recorder.anomalies] == [0, 1]
    anomalies = recorder.anomalies[-1]
    assert anomalies.subject_ids == check.subject_ids and list(anomalies.result.classes) == ["bone", "organ"]
    assert anomalies.correlation is not None  # TinySegmenter records per-scan Dice


def test_two_named_explanation_monitors_keep_separate_state_in_one_checkpoint(tmp_path):
    def monitors():
        return [ExplanationMonitor(every_n_epochs=1, num_scans=2, targets=["organ"], name="organ", at_train_end=False),
                ExplanationMonitor(every_n_epochs=2, num_scans=3, targets=["bone"], name="bone", at_train_end=False),
                AnomalyMonitor(source="bone"), BiasMonitor(columns=["scanner"], source="bone")]

    first = monitors()
    make_trainer(tmp_path, list(first), max_epochs=2).fit(TinySegmenter(), *loaders())
    organ, bone, anomaly, bias = first
    assert [h["epoch"] for h in organ.history] == [0, 1] and [h["epoch"] for h in bone.history] == [1]
    assert len(anomaly.history) == 1 and len(bias.history) == 1  # follows only the "bone" monitor
    metrics = pd.read_csv(next((tmp_path / "csv").rglob("metrics.csv")))
    assert metrics["agg2exp/organ/own_share/organ"].notna().sum() == 2
    assert metrics["agg2exp/bone/own_share/bone"].notna().sum() == 1
    assert "agg2exp/bone/outliers/bone" in metrics.columns

    ckpt = next(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    keys = [k for k in state if k.startswith("ExplanationMonitor")]
    assert len(keys) == 2 and keys[0] != keys[1]
    assert sorted(len(state[k]["scan_ids"]) for k in keys) == [2, 3]

    resumed = monitors()
    make_trainer(tmp_path / "resumed", list(resumed), max_epochs=4).fit(TinySegmenter(), *loaders(), ckpt_path=ckpt)
    assert [h["epoch"] for h in resumed[0].history] == [0, 1, 2, 3]
    assert [h["epoch"] for h in resumed[1].history] == [1, 3]
    assert resumed[0].scan_ids == organ.scan_ids and resumed[1].scan_ids == bone.scan_ids
    assert len(resumed[2].history) == 2


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        (lambda: [ExplanationMonitor(name="a"), ExplanationMonitor(name="b"), AnomalyMonitor()], "pass `source=`"),
        (lambda: [ExplanationMonitor(name="a"), AnomalyMonitor(source="c")], "ExplanationMonitor named 'c'"),
        (lambda: [ExplanationMonitor(name="a/b")], "without '/'"),
    ],
)
def test_ambiguous_or_unknown_sources_fail_at_setup(tmp_path, callbacks, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, callbacks(), max_epochs=1).fit(TinySegmenter(), *loaders())


class BareSegmenter(pl.LightningModule):
    """Only what the contract requires: class names; no `net`, no per-scan Dice, no sliding-window hparams."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = list(CLASSES)
        self.conv = TinySegmenter().net

    def forward(self, x):
        return self.conv(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"][:, 0].long())

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_a_module_with_only_class_names_is_explained_as_itself(tmp_path):
    module = BareSegmenter()
    assert explained_network(module) is module and per_scan_dice(module) == {}
    monitor = ExplanationMonitor(every_n_epochs=1, num_scans=2, at_train_end=False)
    recorder = Recorder()
    make_trainer(tmp_path, [monitor, AnomalyMonitor(), recorder], max_epochs=1).fit(module, *loaders())
    assert recorder.anomalies[0].correlation is None  # no per-scan Dice: no correlation, no error
    direct = explain(module, loaders()[1].dataset[0]["image"], method="vanilla_gradient")
    np.testing.assert_allclose(monitor.latest.roi[0], direct.roi.double().numpy(), rtol=1e-5, atol=1e-7)


def test_class_names_fall_back_to_num_classes_and_say_what_is_missing():
    class Numbered(pl.LightningModule):
        def __init__(self, num_classes: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()

    assert class_names_of(Numbered()) == ["class_0", "class_1"]
    with pytest.raises(ValueError, match="neither `class_names` nor hparams"):
        class_names_of(pl.LightningModule())

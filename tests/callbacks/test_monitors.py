"""The monitor callbacks with the Trainer's defaults (validation under inference_mode), on a tiny model."""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from agg2exp_lightning.callbacks import AnomalyMonitor, BiasMonitor, ExplanationMonitor
from agg2exp_lightning.explain import explain
from agg2exp_lightning.segmentation_metrics import dice_per_class

CLASSES = ["background", "organ", "bone"]


class TinySegmenter(pl.LightningModule):
    """Three classes from one 3x3x3 conv, initialised to segment the scans below (background ~0,
    organ ~0.5, bone ~1); records per-scan validation Dice like SegmentationModule."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(CLASSES)
        self.net = nn.Conv3d(1, 3, 3, padding=1)
        with torch.no_grad():
            self.net.weight.normal_(0.0, 0.01)
            self.net.weight[:, 0, 1, 1, 1] += torch.tensor([-4.0, 0.0, 4.0])
            self.net.bias.copy_(torch.tensor([1.0, 0.0, -3.0]))
        self.last_val_dice: dict[str, torch.Tensor] = {}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["image"])
        return nn.functional.cross_entropy(logits, batch["label"][:, 0].long())

    def validation_step(self, batch, batch_idx):
        pred = self.net(batch["image"]).argmax(1)
        for k, sid in enumerate(batch["subject_id"]):
            self.last_val_dice[sid] = dice_per_class(pred[k], batch["label"][k, 0].long(), 3)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _scans(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = torch.zeros(1, 8, 8, 8)
        label[0, 2:6, 2:6, 2:6] = 1
        label[0, 6:, :, :] = 2
        image = label / 2 + 0.1 * torch.randn(1, 8, 8, 8, generator=g)
        items.append({"image": image, "label": label, "subject_id": f"s{seed}{i:03d}",
                      "metadata": {"scanner": "A" if i % 2 else "B", "age": str(40 + i)}})
    return items


def _loaders(n_val: int = 4):
    return DataLoader(_scans(6, 1), batch_size=2), DataLoader(_scans(n_val, 2), batch_size=1)


def _trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path, max_epochs=kw.pop("max_epochs", 2), accelerator="cpu", devices=1,
        logger=CSVLogger(tmp_path, name="csv"), callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )


def test_monitor_gradients_under_inference_mode_equal_direct_explain(tmp_path):
    torch.manual_seed(0)
    module = TinySegmenter()
    monitor = ExplanationMonitor(every_n_epochs=1, method="vanilla_gradient", num_scans=3, at_train_end=False)
    trainer = _trainer(tmp_path, [monitor], max_epochs=1)
    train, val = _loaders()
    trainer.fit(module, train, val)  # validation runs under torch.inference_mode() by default
    check = monitor.latest
    assert check is not None and check.subject_ids == ["s2000", "s2001", "s2002"]
    assert check.roi.shape == (3, 3, 3) and np.isfinite(check.roi).all()
    for n, item in enumerate(_scans(3, 2)):
        direct = explain(module.net, item["image"], method="vanilla_gradient")
        np.testing.assert_allclose(check.roi[n], direct.roi.double().numpy(), rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in module.parameters())  # explain() restored requires_grad


def test_monitors_log_scalars_tables_and_figures_and_history_survives_resume(tmp_path):
    module = TinySegmenter()
    callbacks = [ExplanationMonitor(every_n_epochs=1, num_scans=4, targets=["organ", "bone"], overlay_classes=["organ"]),
                 AnomalyMonitor(), BiasMonitor(columns=["scanner", "age"])]
    explainer, anomaly, bias = callbacks
    trainer = _trainer(tmp_path, list(callbacks), max_epochs=2)
    train, val = _loaders()
    trainer.fit(module, train, val)
    assert [h["epoch"] for h in explainer.history] == [0, 1]
    assert explainer.history[1]["drift"] is not None and explainer.history[0]["drift"] is None
    assert len(anomaly.history) == 2 and len(bias.history) == 2
    metrics = pd.read_csv(next((tmp_path / "csv").rglob("metrics.csv")))
    for col in ("agg2exp/own_share/organ", "agg2exp/background_share/bone", "agg2exp/drift", "agg2exp/outliers/organ"):
        assert col in metrics.columns and metrics[col].notna().any(), col
    own = metrics["agg2exp/own_share/organ"].dropna().to_numpy()
    assert np.all((own >= 0) & (own <= 1))
    folder = next((tmp_path / "csv").rglob("agg2exp"))
    assert any(folder.glob("figures/agg2exp_global_roi_importance_epoch*.png"))
    assert any(folder.glob("figures/agg2exp_overlay_epoch*.png"))
    assert any(folder.glob("tables/agg2exp_roi_shares_epoch*.csv"))
    assert any(folder.glob("tables/agg2exp_anomaly_scores_epoch*.csv"))

    # resume from the checkpoint: the curves continue instead of starting over
    ckpt = next(tmp_path.rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=True)
    fresh = [ExplanationMonitor(every_n_epochs=1, num_scans=4, targets=["organ", "bone"], overlay_classes=["organ"]),
             AnomalyMonitor(), BiasMonitor(columns=["scanner", "age"])]
    trainer2 = _trainer(tmp_path / "resumed", list(fresh), max_epochs=3)
    trainer2.fit(TinySegmenter(), *_loaders(), ckpt_path=ckpt)
    assert [h["epoch"] for h in fresh[0].history] == [0, 1, 2]
    assert fresh[0].scan_ids == explainer.scan_ids
    assert any("ExplanationMonitor" in k for k in state["callbacks"])


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        (lambda: [ExplanationMonitor(targets=["lungs"])], "no class 'lungs'"),
        (lambda: [ExplanationMonitor(targets=[7])], "class id 7 is outside"),
        (lambda: [ExplanationMonitor(num_scans=9)], "`num_scans`=9 but the validation set holds only 4"),
        (lambda: [ExplanationMonitor(method="smoothgrat")], "smoothgrad"),
        (lambda: [AnomalyMonitor()], "AnomalyMonitor needs a ExplanationMonitor"),
        (lambda: [ExplanationMonitor(), AnomalyMonitor(), BiasMonitor(columns=["sex"])], r"metadata columns \['sex'\] are not in"),
    ],
)
def test_bad_settings_fail_at_setup_with_a_clear_message(tmp_path, callbacks, message):
    trainer = _trainer(tmp_path, callbacks(), max_epochs=1)
    with pytest.raises(ValueError, match=message):
        trainer.fit(TinySegmenter(), *_loaders())
    assert trainer.current_epoch == 0 and trainer.global_step == 0  # nothing trained before the error

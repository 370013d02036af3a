"""A tiny segmenter and scans the monitor tests share (imported by the test files beside this one)."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

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


def scans(n: int, seed: int) -> list[dict]:
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


def loaders(n_val: int = 4):
    return DataLoader(scans(6, 1), batch_size=2), DataLoader(scans(n_val, 2), batch_size=1)


def make_trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path, max_epochs=kw.pop("max_epochs", 2), accelerator="cpu", devices=1,
        logger=CSVLogger(tmp_path, name="csv"), callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )

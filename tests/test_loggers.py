"""W&B logging of a training run, read back from the offline run file: LightningCLI's full resolved
configuration in the run config (SaveConfigToWandb), epoch as the axis of validation values and the best
validation Dice in the summary (issue 14). A tiny module, so the run takes seconds."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from agg2exp_lightning.loggers import SaveConfigToWandb, log_best_validation, wandb_mode
from agg2exp_lightning.wandb_files import find_offline_runs, read_offline_run

DICE = (0.4, 0.7, 0.5)  # scripted per epoch: best 0.7, last 0.5


class Scripted(pl.LightningModule):
    """Logs a scripted validation Dice per epoch (overall and for one class)."""

    def __init__(self, width: int = 4, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/mean_dice_fg", DICE[self.current_epoch])
        self.log("val/dice/heart", DICE[self.current_epoch] / 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, self.hparams.width)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(2, self.hparams.width)), batch_size=2)


def test_offline_run_holds_the_resolved_config_epoch_axis_and_best_dice(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = {"class_path": "agg2exp_lightning.loggers.OfflineFirstWandbLogger", "init_args": {"save_dir": str(tmp_path), "log_model": True}}
    cli = LightningCLI(Scripted, save_config_callback=SaveConfigToWandb, save_config_kwargs={"overwrite": True}, args=[
        "fit", "--model.width=3", "--trainer.max_epochs=3", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger={logger}".replace("'", '"'),
        "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
    ])
    best = cli.trainer.checkpoint_callback.best_model_path
    log_best_validation(cli.trainer, best, ["background", "heart"],
                        {"s1": torch.tensor([0.99, 0.6]), "s2": torch.tensor([0.97, 0.8]), "s3": torch.tensor([0.98, float("nan")])})
    cli.trainer.loggers[0].finalize("success")  # log_model=True: the checkpoints become artifacts at the end
    wandb.finish()
    wandb.teardown()  # the run file is complete once the service has flushed it
    (path,) = find_offline_runs(tmp_path)
    run = read_offline_run(path)

    # one config tree: the module's hyper-parameters only under "model", not again at the top level
    assert not {"width", "lr"} & set(run["config"]), sorted(run["config"])
    # the best checkpoint's validation: in the summary and as a per-class table, not as another val/* point
    assert run["summary"]["best/epoch"] == 2 and run["summary"]["best/checkpoint"] == best
    assert run["summary"]["best/mean_dice_fg"] == pytest.approx(0.7) and run["summary"]["best/dice/heart"] == pytest.approx(0.7)
    (table,) = [r for r in run["history"] if "best/dice_table/_type" in r]
    assert table["best/dice_table/_type"] == "table-file" and table["best/dice_table/nrows"] == 2 and table["best/dice_table/ncols"] == 3
    # log_model offline too: the checkpoint is an artifact that `wandb sync` uploads
    (artifact,) = [a for a in run["artifacts"] if a["type"] == "model"]
    assert artifact["files"] == ["model.ckpt"]

    config = run["config"]  # the whole resolved configuration, not only the module's hyper-parameters
    assert {"trainer", "model", "seed_everything"} <= set(config)
    assert config["model"] == {"width": 3, "lr": 0.01}
    assert config["trainer"]["max_epochs"] == 3
    assert config["trainer"]["logger"]["class_path"] == "agg2exp_lightning.loggers.OfflineFirstWandbLogger"
    assert [cb["class_path"] for cb in config["trainer"]["callbacks"]] == ["lightning.pytorch.callbacks.LearningRateMonitor"]

    steps = {m["name"]: m["step_metric"] for m in run["metrics"]}
    assert steps["val/*"] == "epoch" and steps["val/mean_dice_fg"] == "epoch" and steps["val/dice/heart"] == "epoch"
    rows = [r for r in run["history"] if "val/mean_dice_fg" in r]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["val/mean_dice_fg"] for r in rows] == pytest.approx(DICE)
    assert run["summary"]["val/mean_dice_fg"] == pytest.approx({"max": 0.7, "last": 0.5})
    assert run["summary"]["val/dice/heart"] == pytest.approx({"max": 0.35, "last": 0.25})


def test_wandb_mode_is_offline_unless_said_otherwise(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "onlin")
    with pytest.raises(ValueError, match="WANDB_MODE to be one of online, offline, disabled, but got 'onlin'"):
        wandb_mode()

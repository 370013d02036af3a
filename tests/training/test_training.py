"""Training through train.py's own function, on the synthetic cohort, with tiny settings."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from agg2exp_lightning.model import SegmentationModule
from agg2exp_lightning.model_loading import load_segmentation_checkpoint
from agg2exp_lightning.training import train

NO_MONITORS = ("--config", str(Path(__file__).parents[1] / "configs" / "checkpoints_only.yaml"))


def _args(root, run_dir, *extra, model_args=()):
    return [
        "demo",
        f"--data.data_root={root}",
        "--data.spacing=[8.0, 8.0, 8.0]",
        "--data.roi_size=[32, 32, 32]",
        *model_args,
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        *extra,
    ]


def test_fast_dev_run_through_train(tiny_cohort, tiny_model_args, tmp_path):
    out = train(_args(tiny_cohort, tmp_path / "run", *NO_MONITORS, "--trainer.fast_dev_run=true", model_args=tiny_model_args))
    assert out["best_checkpoint"] is None and out["run_dir"] == str(tmp_path / "run")


def test_short_run_with_the_demo_monitors(tiny_cohort, tiny_model_args, tmp_path, monkeypatch):
    """The demo config end to end: train, validate the best checkpoint, explanation monitors at the end; its
    offline W&B run as a W&B user reads it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = tmp_path / "run"
    out = train(_args(tiny_cohort, run, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                      "--trainer.check_val_every_n_epoch=1", model_args=tiny_model_args))
    best = Path(out["best_checkpoint"])
    assert best.is_file() and best.parent == run / "checkpoints"
    table = (run / "dice_table.md").read_text()
    assert "| aorta |" in table and "mean foreground" in table
    assert 0.0 <= out["dice"]["mean_foreground"] <= 1.0 and not math.isnan(out["dice"]["mean_foreground"])
    figures = sorted(p.name for p in run.rglob("agg2exp/figures/*.png"))
    assert any(n.startswith("agg2exp_global_roi_importance") for n in figures), figures
    assert any(p.name.startswith("agg2exp_anomaly_scores") for p in run.rglob("agg2exp/tables/*.csv"))
    import wandb

    from agg2exp_lightning.wandb_files import find_offline_runs, read_offline_run

    wandb.finish()
    wandb.teardown()
    (path,) = find_offline_runs(run)
    logged = read_offline_run(path)
    val = [r for r in logged["history"] if "val/mean_dice_fg" in r]
    assert [r["epoch"] for r in val] == [0]  # the best checkpoint's final validation is not a point at epoch 1
    assert [r["epoch"] for r in logged["history"] if "val/loss" in r] == [0] and all(math.isfinite(r["val/loss"]) for r in val)
    assert logged["summary"]["best/mean_dice_fg"] == pytest.approx(out["dice"]["mean_foreground"])
    assert logged["summary"]["best/checkpoint"] == str(best) and logged["summary"]["best/epoch"] == 0
    assert "model" in logged["config"] and "feature_size" not in logged["config"]  # one config tree
    # the checkpoint loads safely (weights_only) into an identical module
    module = load_segmentation_checkpoint(best, num_classes=17, in_channels=1)
    assert isinstance(module, SegmentationModule) and not module.training
    x = torch.rand(1, 1, 32, 32, 32)
    assert module(x).shape == (1, 17, 32, 32, 32)


def test_unknown_config_key_is_refused(tiny_cohort, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(_args(tiny_cohort, tmp_path / "run", "--model.feature_sise=12"))
    assert "feature_sise" in capsys.readouterr().err


def test_bad_feature_size_names_argument():
    with pytest.raises(ValueError, match="`feature_size` to be a positive multiple of 12"):
        SegmentationModule(feature_size=10)


def test_window_size_reaches_the_network_and_the_checkpoint_and_is_checked(tmp_path):
    from monai.networks.nets.swin_unetr import WindowAttention

    module = SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(64, 64, 64), window_size=4)
    windows = {tuple(m.window_size) for m in module.net.modules() if isinstance(m, WindowAttention)}
    assert windows == {(4, 4, 4)} and module.hparams.window_size == 4
    default = SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(64, 64, 64))
    assert {tuple(m.window_size) for m in default.net.modules() if isinstance(m, WindowAttention)} == {(7, 7, 7)}
    path = tmp_path / "w4.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    loaded = SegmentationModule(**torch.load(path, weights_only=False)["hyper_parameters"])
    loaded.load_state_dict(torch.load(path, weights_only=False)["state_dict"])  # the bias tables fit 4^3 windows
    with pytest.raises(ValueError, match="`window_size` to be a positive integer, but got 0"):
        SegmentationModule(feature_size=12, window_size=0)


def test_killed_run_resumes_from_last_checkpoint(tiny_cohort, tiny_model_args, tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    common = (*NO_MONITORS, "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=5")
    out = train(_args(tiny_cohort, run, "--trainer.max_epochs=1", *common, model_args=tiny_model_args))
    assert out["resumed_from"] is None and torch.load(last, weights_only=True)["global_step"] == 2
    # a run stopped after epoch 1 and started again for 2 epochs continues to the uninterrupted total
    out = train(_args(tiny_cohort, run, "--trainer.max_epochs=2", *common, model_args=tiny_model_args))
    assert out["resumed_from"] == str(last) and torch.load(last, weights_only=True)["global_step"] == 4
    out = train(_args(tiny_cohort, run, "--resume=never", "--trainer.max_epochs=1", *common, model_args=tiny_model_args))
    assert out["resumed_from"] is None and torch.load(last, weights_only=True)["global_step"] == 2
    with pytest.raises(ValueError, match="`--resume`"):
        train(_args(tiny_cohort, run, "--resume=/no/such.ckpt", model_args=tiny_model_args))


def test_the_end_of_a_run_says_where_its_files_are(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from agg2exp_lightning.training.report import where_things_are

    # With a CSV logger the monitors write under the logger's version folder, not under the run folder.
    trainer = Trainer(default_root_dir=tmp_path, logger=CSVLogger(save_dir=tmp_path, name="csv"),
                      callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts")], enable_progress_bar=False)
    log_dir = Path(trainer.log_dir)
    assert log_dir.parent == tmp_path / "csv"
    figures = log_dir / "agg2exp" / "figures"
    figures.mkdir(parents=True)
    (tmp_path / "ckpts").mkdir()
    text = where_things_are(tmp_path, trainer)
    assert f"Run folder: {tmp_path.resolve()}" in text
    assert "checkpoints:" in text and str((tmp_path / "ckpts").resolve()) in text
    assert "explanation figures:" in text and str(figures.resolve()) in text
    assert "explanation tables:" not in text and "Dice table:" not in text  # absent: not announced
    assert "logs:" in text and str(log_dir.resolve()) in text

"""A killed and resumed training is one W&B run, and leaves no empty offline run for ``wandb sync`` (issue 27).

Before: the killed process's offline folder held nothing but the file header (wandb flushes its log every 15 s,
and a SIGKILL of the training takes wandb's service down with it), and the resumed training started a second run
with a new id: ``wandb sync <run>/wandb/offline-run-*`` uploaded an empty run beside the real one.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agg2exp_lightning.training import train
from agg2exp_lightning.wandb_files import find_offline_runs, read_offline_run

REPO = Path(__file__).resolve().parents[2]
NO_MONITORS = ("--config", str(REPO / "tests" / "configs" / "checkpoints_only.yaml"))
#: The 7-byte header of a W&B transaction log, as wandb 0.31 writes it: all a run killed before its first flush has.
HEADER = b":W&B\xe1\xbe\x00"
#: ``python -c KILLED ARGS...``: train.py's main, SIGKILLed before its fourth training step (after epoch 0's last.ckpt).
KILLED = r"""
import os, signal, sys
from agg2exp_lightning import model as M
real_step = M.SegmentationModule.training_step
def step(self, batch, batch_idx):
    if self.global_step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(self, batch, batch_idx)
M.SegmentationModule.training_step = step
from agg2exp_lightning.training import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    """Eight synthetic subjects, 40^3 voxels of 8 mm: less to read at set-up than the 36 of ``tiny_cohort``."""
    from agg2exp_lightning.data.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("cohort") / "thorax"
    generate_cohort(root, n_subjects=8, seed=5, shape=(40, 40, 40), spacing=8.0, progress=False)
    return root


def _args(root: Path, run_dir: Path, model_args: list[str]) -> list[str]:
    return ["demo", f"--data.data_root={root}", "--data.spacing=[8.0, 8.0, 8.0]", "--data.roi_size=[32, 32, 32]", *model_args,
            f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}", *NO_MONITORS,
            "--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=1",
            "--trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_killed_then_resumed_training_is_one_wandb_run_without_an_empty_one(small_cohort, tiny_model_args, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = tmp_path / "run"
    args = _args(small_cohort, run, tiny_model_args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()

    out = train(args)  # the same command again: continues from last.ckpt
    assert out["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    wandb.finish()
    wandb.teardown()  # the run file is complete once the service has flushed it

    logs = find_offline_runs(run)
    ids = {path.stem.removeprefix("run-") for path in logs}
    assert len(ids) == 1, f"the resumed training started another W&B run: {[p.parent.name for p in logs]}"
    runs = [read_offline_run(path) for path in logs]
    assert all(r["config"] or r["history"] or r["summary"] for r in runs), "an offline run that holds nothing is left"
    resumed = runs[-1]
    assert [r["epoch"] for r in resumed["history"] if "val/mean_dice_fg" in r] == [1]  # epoch 1, after the resume
    assert resumed["summary"]["best/checkpoint"] == out["best_checkpoint"]


def _offline_run(wandb_dir: Path, name: str, content: bytes | None) -> Path:
    folder = wandb_dir / name
    (folder / "files").mkdir(parents=True)
    (folder / "files" / "output.log").write_text("console output\n")
    if content is not None:
        (folder / f"run-{name.rsplit('-', 1)[1]}.wandb").write_bytes(content)
    return folder


def test_only_the_recorded_runs_offline_folders_that_hold_nothing_are_removed(tmp_path):
    from agg2exp_lightning.training.wandb_run import remove_empty_offline_runs
    from agg2exp_lightning.wandb_files import offline_run_is_empty

    payload = b"\x0a\x02hi"  # one record (framing only: a FULL record of 4 bytes)
    record = struct.pack("<IHB", 0, len(payload), 1) + payload
    stub = _offline_run(tmp_path, "offline-run-20260101_000000-abc123", HEADER)
    kept = {
        "holds a record": _offline_run(tmp_path, "offline-run-20260101_000100-abc123", HEADER + record),
        "no transaction log": _offline_run(tmp_path, "offline-run-20260101_000200-abc123", None),
        "an empty file, not a W&B log": _offline_run(tmp_path, "offline-run-20260101_000300-abc123", b""),
        "another run": _offline_run(tmp_path, "offline-run-20260101_000400-xyz789", HEADER),
        "online": _offline_run(tmp_path, "run-20260101_000500-abc123", HEADER),
    }
    assert offline_run_is_empty(stub) and not offline_run_is_empty(kept["holds a record"])
    assert remove_empty_offline_runs(tmp_path, "abc123") == [stub]
    assert not stub.exists()
    assert all(folder.is_dir() for folder in kept.values())
    assert remove_empty_offline_runs(tmp_path / "missing", "abc123") == []


def test_continue_run_passes_the_id_to_wandb_and_refuses_once_started(tmp_path, monkeypatch):
    import wandb

    from agg2exp_lightning.loggers import OfflineFirstWandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = OfflineFirstWandbLogger(str(tmp_path))
    with pytest.raises(ValueError, match="`run_id`"):
        logger.continue_run("")
    logger.continue_run("abc123")
    assert logger.version == "abc123"
    assert logger.experiment.id == "abc123"
    with pytest.raises(RuntimeError, match="already started"):
        logger.continue_run("xyz789")
    wandb.finish()
    assert [p.parent.name.rsplit("-", 1)[1] for p in find_offline_runs(tmp_path)] == ["abc123"]


def test_disabled_wandb_records_and_removes_nothing(tmp_path, monkeypatch):
    from agg2exp_lightning.loggers import OfflineFirstWandbLogger
    from agg2exp_lightning.training.wandb_run import RUN_RECORD, start_wandb_runs

    monkeypatch.setenv("WANDB_MODE", "disabled")
    trainer = SimpleNamespace(loggers=[OfflineFirstWandbLogger(str(tmp_path))])
    start_wandb_runs(trainer, tmp_path, resuming=True)
    assert not (tmp_path / RUN_RECORD).exists()

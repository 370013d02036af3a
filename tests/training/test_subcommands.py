"""``validate`` / ``test`` / ``predict`` on a fitted tiny model, and ``validate`` under two DDP processes (gloo on
CPU) giving the same Dice table and monitor outputs as one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agg2exp_lightning.training import train

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NO_MONITORS = ("--config", str(REPO / "tests" / "configs" / "checkpoints_only.yaml"))
MONITORS = ("--config", str(Path(__file__).parent / "configs" / "validation_monitors.yaml"))
#: tests/conftest.py's tiny Swin-UNETR (its fixture is per test; the model here is fitted once per module)
TINY_MODEL_ARGS = ("--model.feature_size=12", "--model.depths=[1, 1, 1, 1]", "--model.roi_size=[32, 32, 32]",
                   '--model.norm_name=["group", {"num_groups": 3}]')


def _data(root) -> list[str]:
    return [f"--data.data_root={root}", "--data.spacing=[8.0, 8.0, 8.0]", "--data.roi_size=[32, 32, 32]"]


@pytest.fixture(scope="module")
def fitted(tiny_cohort, tmp_path_factory):
    """A tiny model fitted for two steps: (cohort, run folder, last.ckpt)."""
    run = tmp_path_factory.mktemp("fitted") / "run"
    train(["demo", *_data(tiny_cohort), *TINY_MODEL_ARGS, f"--trainer.default_root_dir={run}",
           f"--trainer.logger.init_args.save_dir={run}", *NO_MONITORS, "--trainer.max_epochs=1",
           "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=5"])
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    return tiny_cohort, run, last


def _evaluate(subcommand, cohort, run, ckpt, *extra):
    return train([subcommand, "--config", "demo", *_data(cohort), f"--ckpt_path={ckpt}",
                  f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}", *NO_MONITORS,
                  *extra])


def test_validate_and_test_write_their_dice_tables(fitted, tmp_path):
    from agg2exp_lightning.data.subjects import discover_records

    cohort, _, last = fitted
    out = _evaluate("validate", cohort, tmp_path, last)
    splits = {}
    for r in discover_records(cohort):
        splits.setdefault(r.split, []).append(r.subject_id)
    assert sorted(out["per_scan"]) == sorted(splits["val"])  # every validation scan, once
    text = (tmp_path / "dice_table.md").read_text()
    assert f"Validation Dice of {last}" in text and f"({len(splits['val'])} scans)" in text
    out = _evaluate("test", cohort, tmp_path, last)
    assert sorted(out["per_scan"]) == sorted(splits["test"])
    assert f"({len(splits['test'])} scans)" in (tmp_path / "test_dice_table.md").read_text()


def test_predict_writes_label_maps_on_each_input_grid(fitted, tmp_path):
    import nibabel as nib

    from agg2exp_lightning.data.subjects import discover_records

    cohort, _, last = fitted
    out = _evaluate("predict", cohort, tmp_path, last, f"--predictions_dir={tmp_path / 'maps'}")
    tests = {r.subject_id: r for r in discover_records(cohort) if r.split == "test"}
    written = sorted(Path(p).name for p in out["written"])
    assert written == sorted(f"{sid}.nii.gz" for sid in tests)
    for sid, record in tests.items():
        source = nib.load(record.image)
        label_map = nib.load(tmp_path / "maps" / f"{sid}.nii.gz")
        assert label_map.shape == source.shape
        np.testing.assert_allclose(label_map.affine, source.affine, atol=1e-5)
        values = np.asarray(label_map.dataobj)
        assert values.dtype == np.uint8 and values.max() < 17


def _cli(*args, devices: int, run: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / "train.py"), *args, f"--trainer.devices={devices}",
           f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}"]
    if devices > 1:
        cmd.append("--trainer.strategy=ddp")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


def _outputs(run: Path) -> dict:
    tables = {p.name.rsplit("_epoch", 1)[0]: pd.read_csv(p, index_col=0) for p in run.rglob("agg2exp/tables/*.csv")}
    metrics = pd.concat([pd.read_csv(p) for p in run.rglob("metrics.csv")])
    return {"dice": (run / "dice_table.md").read_text(), "tables": tables,
            # wall-clock seconds differ from run to run; everything else logged must agree
            "metrics": metrics.drop(columns=[c for c in metrics if c in ("step", "epoch") or c.endswith("seconds")])
                              .mean(numeric_only=True)}


def test_two_ddp_processes_give_the_same_dice_table_and_monitor_outputs(fitted, tmp_path):
    """Five validation scans on two ranks: DistributedSampler gives rank 1 a repeat of scan 0. Per-scan Dice, the
    Dice table, the explanation and anomaly monitors' tables and the anomaly-Dice correlation cover every scan."""
    cohort, _, last = fitted
    args = ("validate", "--config", "demo", *_data(cohort), f"--ckpt_path={last}", *MONITORS)
    one = _cli(*args, devices=1, run=tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(*args, devices=2, run=tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert "(5 scans)" in a["dice"] and a["dice"] == b["dice"]
    assert set(a["tables"]) == set(b["tables"]) == {"agg2exp_roi_shares", "agg2exp_anomaly_scores"}
    for name in a["tables"]:
        left, right = a["tables"][name].sort_index(), b["tables"][name].sort_index()
        assert left.index.nunique() == 5 and list(left.index) == list(right.index), name
        pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-4, atol=1e-6)
    rho = [k for k in a["metrics"].index if k.startswith("agg2exp/anomaly_dice_rho/")]
    assert rho, "the anomaly monitor found per-scan Dice for every explained scan"
    # one process with two threads against two with one each: oneDNN sums in another order, and the untrained
    # net's loss (~7.5) moves by ~1e-4 of itself; a scan lost or repeated would move the means by far more
    pd.testing.assert_series_equal(a["metrics"].sort_index(), b["metrics"].sort_index(), check_exact=False,
                                   rtol=1e-3, atol=1e-6)

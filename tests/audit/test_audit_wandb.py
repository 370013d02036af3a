"""W&B logging of an audit, read back from the offline run's own file: history keys, summary, the audit
Artifact's manifest and metadata; the model -> audit lineage call online; degrading without wandb."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys

import pytest

from agg2exp_lightning.audit.table_audit import run_table_audit
from agg2exp_lightning.audit.wandb_logging import _use_model, log_audit_to_wandb
from agg2exp_lightning.wandb_files import find_offline_runs, read_offline_run


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, make_frame):
    tmp = tmp_path_factory.mktemp("wb")
    make_frame(40, 3).to_csv(tmp / "t.csv", index=False)
    return run_table_audit(tmp / "t.csv", tmp / "out")


@pytest.mark.slow  # about 35 s of W&B service start and flush on a busy 2-core machine
def test_offline_run_holds_tables_report_summary_and_the_audit_artifact(outputs, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    (outputs.out_dir / "maps" / "s0").mkdir(parents=True, exist_ok=True)  # as --save-maps leaves them
    (outputs.out_dir / "maps" / "s0" / "s0_prediction.nii.gz").write_bytes(b"not read here")
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"weights")
    try:
        assert log_audit_to_wandb(outputs, config={"mode": "table", "method": "smoothgrad"}, model_file=checkpoint) is True
        wandb.teardown()  # the run file is complete once the service has flushed it
        (path,) = find_offline_runs(outputs.out_dir)
    finally:
        shutil.rmtree(outputs.out_dir / "maps")
    run = read_offline_run(path)
    summary = json.loads(outputs.summary_json.read_text())

    assert run["config"]["method"] == "smoothgrad"
    keys = {k.split("/")[0] for row in run["history"] for k in row}
    assert {"per_scan", "per_class", "strongest_dependencies", "report", "figures"} <= keys
    report = next(row for row in run["history"] if "report/_type" in row)
    assert report["report/_type"] == "html-file"
    assert run["summary"]["n_scans"] == summary["n_scans"] > 0
    assert run["summary"]["n_outlier_scans"] == summary["anomaly"]["n_outlier_scans"]

    (artifact,) = [a for a in run["artifacts"] if a["type"] == "audit"]
    assert artifact["name"] == "audit-out"
    assert {"report.html", "summary.json", "per_scan.csv", "maps/s0/s0_prediction.nii.gz"} <= set(artifact["files"])
    assert any(f.startswith("figures/") and f.endswith(".png") for f in artifact["files"])
    model = artifact["metadata"]["model"]
    assert model["file"] == str(checkpoint.resolve()) and model["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert artifact["metadata"]["n_scans"] == summary["n_scans"]
    assert run["use_artifacts"] == []  # W&B records artifact use online only


class RecordingRun:
    def __init__(self) -> None:
        self.used: list = []

    def use_artifact(self, artifact):
        self.used.append(artifact)


def test_online_the_run_uses_the_models_artifact_or_a_reference_to_the_checkpoint(tmp_path):
    import wandb

    run = RecordingRun()
    info = _use_model(wandb, run, "online", "team/thorax/model-1a2b3c:best", None)
    assert run.used == ["team/thorax/model-1a2b3c:best"] and info == {"artifact": "team/thorax/model-1a2b3c:best"}

    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"weights")
    run = RecordingRun()
    _use_model(wandb, run, "online", None, checkpoint)
    (reference,) = run.used
    assert reference.type == "model" and reference.name.startswith("checkpoint-best")
    (entry,) = reference.manifest.entries.values()
    assert entry.ref == checkpoint.resolve().as_uri()

    run = RecordingRun()
    _use_model(wandb, run, "offline", "model-1a2b3c:best", checkpoint)
    assert run.used == []


def test_missing_wandb_degrades_with_a_message(outputs, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with caplog.at_level(logging.WARNING):
        assert log_audit_to_wandb(outputs) is False
    assert "wandb is not installed" in caplog.text

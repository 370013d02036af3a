"""Optional W&B logging: logs with wandb (disabled mode in tests), degrades without it."""
from __future__ import annotations

import logging
import sys

import pytest

from agg2exp_lightning.audit.table_audit import run_table_audit
from agg2exp_lightning.audit.wandb_logging import log_audit_to_wandb


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, make_frame):
    tmp = tmp_path_factory.mktemp("wb")
    make_frame(40, 3).to_csv(tmp / "t.csv", index=False)
    return run_table_audit(tmp / "t.csv", tmp / "out")


def test_logs_one_run_without_prompting(outputs, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_audit_to_wandb(outputs, config={"mode": "table"}) is True


def test_missing_wandb_degrades_with_a_message(outputs, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with caplog.at_level(logging.WARNING):
        assert log_audit_to_wandb(outputs) is False
    assert "wandb is not installed" in caplog.text

"""Log an audit's tables and figures to one Weights & Biases run (optional integration).

wandb is imported lazily; when it is missing or fails to start, the audit goes on and a warning
says why. The run's mode is ``WANDB_MODE`` from the environment, ``offline`` when unset, so an
audit never prompts for a login.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from agg2exp_lightning.audit.outputs import AuditOutputs

log = logging.getLogger(__name__)


def _per_class_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"class": c, **v} for c, v in summary["per_class"].items()])


def log_audit_to_wandb(
    outputs: AuditOutputs,
    *,
    project: str = "agg2exp-audit",
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> bool:
    """Log the per-scan table, per-class table, bias tests, headline numbers and figures.

    Args:
        outputs: what :func:`~agg2exp_lightning.audit.outputs.write_audit_outputs` wrote.
        project: W&B project.
        run_name: W&B run name (default: the output folder's name).
        config: the audit configuration, stored as the run's config.

    Returns:
        ``True`` if a run was logged, ``False`` when wandb is unavailable or failed to start
        (a warning says why).
    """
    try:
        import wandb
    except ImportError:
        log.warning("W&B logging requested but wandb is not installed (pip install wandb); skipping it")
        return False
    mode = os.environ.get("WANDB_MODE", "offline")
    try:
        run = wandb.init(project=project, name=run_name or outputs.out_dir.name, mode=mode, config=dict(config or {}),
                         dir=str(outputs.out_dir))
    except Exception as err:  # wandb raises its own error types for login/network problems
        log.warning("W&B logging skipped: wandb.init failed (%s: %s)", type(err).__name__, err)
        return False
    try:
        summary = outputs.summary
        per_scan = pd.read_csv(outputs.per_scan_csv)
        bias = pd.DataFrame(summary["bias_tests"])
        payload: dict[str, Any] = {
            "per_scan": wandb.Table(dataframe=per_scan),
            "per_class": wandb.Table(dataframe=_per_class_frame(summary)),
            "strongest_dependencies": wandb.Table(dataframe=pd.DataFrame(summary["strongest_dependencies"])),
        }
        if len(bias):
            payload["bias_tests"] = wandb.Table(dataframe=bias)
        for key, path in outputs.figures.items():
            payload[f"figures/{key}"] = wandb.Image(str(path))
        run.log(payload)
        run.summary["n_scans"] = summary["n_scans"]
        run.summary["n_outlier_scans"] = summary["anomaly"]["n_outlier_scans"]
        for c, v in summary["per_class"].items():
            if v["rho"] is not None:
                run.summary[f"rho/{c}"] = v["rho"]
                run.summary[f"q/{c}"] = v["q"]
        log.info("audit logged to W&B (mode=%s, project=%s)", mode, project)
        return True
    finally:
        run.finish()

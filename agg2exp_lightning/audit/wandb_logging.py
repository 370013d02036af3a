"""Log an audit to one Weights & Biases run (optional integration): tables, figures, the report, and the
audit folder as an Artifact whose input is the audited model.

wandb is imported lazily; when it is missing or fails to start, the audit goes on and a warning
says why. The run's mode is ``WANDB_MODE`` from the environment, ``offline`` when unset
(:func:`agg2exp_lightning.loggers.wandb_mode`), so an audit never prompts for a login.

Lineage model -> audit: the audit's Artifact (type ``audit``: ``report.html``, ``summary.json``,
``per_scan.csv``, the figures and, when saved, the NIfTI maps) is logged by a run that *uses* the model's
artifact: the W&B artifact named by ``model_artifact`` (e.g. ``model-1a2b3c:best``, logged by training with
``log_model``), else a reference artifact of the checkpoint file. W&B records artifact use only online;
offline, the model's file, hash and artifact name are kept in the audit Artifact's metadata.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from agg2exp_lightning.audit.outputs import AuditOutputs

log = logging.getLogger(__name__)

#: Files of the audit folder that go into its Artifact (when present), besides ``figures/`` and ``maps/``.
ARTIFACT_FILES = ("report.html", "summary.json", "per_scan.csv", "audit.json", "failed_scans.json")


def _per_class_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"class": c, **v} for c, v in summary["per_class"].items()])


def _artifact_name(text: str) -> str:
    """A valid W&B artifact name (letters, digits, ``-``, ``_``, ``.``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text).strip("-.") or "audit"


def audit_artifact(wandb: Any, outputs: AuditOutputs, *, metadata: Mapping[str, Any] | None = None) -> Any:
    """The audit folder as a ``wandb.Artifact`` of type ``audit`` (report, summary, tables, figures, maps)."""
    out = outputs.out_dir
    artifact = wandb.Artifact(_artifact_name(f"audit-{out.name}"), type="audit",
                              description="Agg2Exp audit: report, summary, per-scan table, figures and maps",
                              metadata=dict(metadata or {}))
    for name in ARTIFACT_FILES:
        if (out / name).is_file():
            artifact.add_file(str(out / name), name=name)
    for folder in ("figures", "maps"):
        if (out / folder).is_dir() and any((out / folder).rglob("*")):
            artifact.add_dir(str(out / folder), name=folder)
    return artifact


def _use_model(wandb: Any, run: Any, mode: str, model_artifact: str | None, model_file: Path | None) -> dict[str, Any]:
    """Declare the audited model as the run's input (online); its description for the metadata either way."""
    from agg2exp_lightning.utils import file_sha256

    info: dict[str, Any] = {}
    if model_artifact:
        info["artifact"] = model_artifact
    if model_file is not None and model_file.is_file():
        info.update(file=str(model_file.resolve()), sha256=file_sha256(model_file))
    if not info:
        return info
    if mode != "online":
        log.info("W&B lineage model -> audit is recorded online only (WANDB_MODE=online); offline, the model is "
                 "named in the audit artifact's metadata")
        return info
    try:
        if model_artifact:
            run.use_artifact(model_artifact)
        else:
            reference = wandb.Artifact(_artifact_name(f"checkpoint-{model_file.stem}"), type="model",
                                       metadata={"sha256": info["sha256"]})
            reference.add_reference(model_file.resolve().as_uri(), name=model_file.name)
            run.use_artifact(reference)
    except Exception as err:  # an unknown artifact name, no access ...: the audit is logged without the link
        log.warning("W&B: could not use the model's artifact %s (%s: %s); the audit is logged without the link",
                    model_artifact or model_file, type(err).__name__, err)
    return info


def log_audit_to_wandb(
    outputs: AuditOutputs,
    *,
    project: str = "agg2exp-audit",
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    model_artifact: str | None = None,
    model_file: str | Path | None = None,
) -> bool:
    """Log the audit's tables, headline numbers, figures and report, and its folder as an Artifact.

    Args:
        outputs: what :func:`~agg2exp_lightning.audit.outputs.write_audit_outputs` wrote.
        project: W&B project.
        run_name: W&B run name (default: the output folder's name).
        config: the audit configuration, stored as the run's config.
        model_artifact: the W&B artifact of the audited model (e.g. ``model-<run id>:best`` from training
            with ``log_model``); used as the run's input online.
        model_file: the audited checkpoint; without ``model_artifact``, a reference artifact of it is the
            run's input online. Offline, both are named in the audit artifact's metadata.

    Returns:
        ``True`` if a run was logged, ``False`` when wandb is unavailable or failed to start
        (a warning says why).
    """
    try:
        import wandb
    except ImportError:
        log.warning("W&B logging requested but wandb is not installed (pip install wandb); skipping it")
        return False
    from agg2exp_lightning.loggers import wandb_mode

    try:
        mode = wandb_mode()
        run = wandb.init(project=project, name=run_name or outputs.out_dir.name, mode=mode, config=dict(config or {}),
                         dir=str(outputs.out_dir), job_type="audit")
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
            "report": wandb.Html(outputs.report_html.read_text(encoding="utf-8"), inject=False),
        }
        if len(bias):
            payload["bias_tests"] = wandb.Table(dataframe=bias)
        for key, path in outputs.figures.items():
            payload[f"figures/{key}"] = wandb.Image(str(path))
        run.log(payload)
        # the report's words (its Glossary): "flagged" by the scan-level score; "outlier for any class" by the forests
        run.summary["n_scans"] = summary["n_scans"]
        run.summary["n_outlier_scans"] = summary["anomaly"]["n_outlier_scans"]  # outlier for any class (the paper's rule)
        scan = summary.get("scan_anomaly") or {}
        if "n_flagged" in scan:
            run.summary["scan_level/n_flagged"] = scan["n_flagged"]
            run.summary["scan_level/expected_false_positive_rate"] = scan["expected_false_positive_rate"]
        for c, v in summary["per_class"].items():
            if v["rho"] is not None:  # Spearman of the class's forest score and Dice
                run.summary[f"forest_score_vs_dice/rho/{c}"] = v["rho"]
                run.summary[f"forest_score_vs_dice/q/{c}"] = v["q"]
        model = _use_model(wandb, run, mode, model_artifact, None if model_file is None else Path(model_file))
        metadata = {"n_scans": summary["n_scans"], "n_outlier_scans": summary["anomaly"]["n_outlier_scans"], "model": model}
        run.log_artifact(audit_artifact(wandb, outputs, metadata=metadata))
        log.info("audit logged to W&B (mode=%s, project=%s)", mode, project)
        return True
    finally:
        run.finish()

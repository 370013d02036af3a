"""The post-hoc model audit: orchestration of the cohort analysis, output folder and CLI.

``audit(model, data, ...)`` runs the whole audit from Python and returns the analysis.
"""
from __future__ import annotations

from agg2exp_lightning.audit.api import audit
from agg2exp_lightning.audit.output_folder import open_output_folder
from agg2exp_lightning.audit.outputs import AuditOutputs, write_audit_outputs
from agg2exp_lightning.audit.table_audit import run_table_audit

__all__ = ["AuditOutputs", "audit", "open_output_folder", "run_table_audit", "write_audit_outputs"]

"""Audit a table of aggregated explanations that already exists (``--from-table``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agg2exp_lightning.analysis.cohort import analyze_cohort
from agg2exp_lightning.analysis.regions import resolve_merges
from agg2exp_lightning.analysis.tables import read_explanation_table
from agg2exp_lightning.audit.output_folder import open_output_folder
from agg2exp_lightning.audit.outputs import AuditOutputs, sha256_note, write_audit_outputs
from agg2exp_lightning.audit_settings import AuditSettings, checked_settings
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.utils.files import file_sha256

log = logging.getLogger(__name__)


def run_table_audit(
    table: str | Path,
    out_dir: str | Path,
    *,
    metadata: str | Path | None = None,
    reference_table: str | Path | None = None,
    label_map: str | Path | None = None,
    overwrite: bool = False,
    settings: AuditSettings | None = None,
    wandb: bool = False,
    wandb_project: str = "agg2exp-audit",
    **fields: Any,
) -> AuditOutputs:
    """Read a table in the published column format, analyse the cohort, write the audit folder.

    Args:
        table: CSV/TSV of aggregated explanations (one row per scan).
        out_dir: output folder; refused if it holds another audit, unless ``overwrite``.
        metadata: optional CSV/TSV of metadata joined on the id (``patient`` or ``image_id``).
        reference_table: optional table to fit the Isolation Forests on (e.g. training scans).
        label_map: JSON/YAML naming the model's classes (see
            :func:`~agg2exp_lightning.model_loading.read_label_map`), for tables of models other than the
            published thorax one; default: the 17 thorax labels and their published spellings.
        overwrite: replace another audit's results in ``out_dir``.
        settings: the audit's :class:`~agg2exp_lightning.audit_settings.AuditSettings` (checked once where
            built; the analysis fields are used: protocol, merges, detector, random_state, contamination, ...).
        wandb: also log tables and figures to one W&B run.
        wandb_project: the W&B project.
        **fields: :class:`~agg2exp_lightning.audit_settings.AuditSettings` fields set on top of ``settings``
            (e.g. ``protocol="paper"``, ``merges=["lung"]``, ``contamination=0.1``).

    Returns:
        The written outputs and summary.

    Raises:
        DataError: unreadable or malformed tables, or an output folder of another audit.

    Example:
        >>> run_table_audit("tsv2_test_aggregated_sg_explanations_with_dice.csv", "audit_out")  # doctest: +SKIP
    """
    settings = checked_settings(settings, fields)
    table = Path(table)
    config = {
        "mode": "table",
        "table": str(table.resolve()),
        "table_sha256": file_sha256(table) if table.is_file() else None,
        "metadata_sha256": file_sha256(metadata) if metadata is not None and Path(metadata).is_file() else None,
        "reference_sha256": file_sha256(reference_table) if reference_table is not None and Path(reference_table).is_file() else None,
        **settings.fingerprint_fields("analysis"),
    }
    # Read and validate first, so a bad input leaves the output folder untouched.
    protocol = settings.protocol
    if label_map is not None:
        from agg2exp_lightning.model_loading import read_label_map

        classes = read_label_map(label_map)
        config["label_map"] = list(classes)
    else:
        from agg2exp_lightning.labels import THORAX_CLASSES as classes
    cohort = read_explanation_table(table, classes, metadata=metadata)
    reference = read_explanation_table(reference_table, classes) if reference_table is not None else None
    merged = _checked(resolve_merges, settings.merges, cohort.regions)
    config.update(protocol=protocol.as_dict(), merges={k: list(v) for k, v in merged.items()})
    open_output_folder(out_dir, config, overwrite=overwrite)
    log.info("auditing %d scans from %s%s", len(cohort), table, f" (forests fitted on {len(reference)} reference scans)" if reference else "")
    analysis = analyze_cohort(cohort, reference, settings, merges=merged)
    inputs = {
        "audit": "table of aggregated explanations (--from-table); the explanations were made elsewhere",
        "table": sha256_note(table),
        "metadata": sha256_note(metadata, "none (pass --metadata FILE to test subgroups)"),
        "model": "not run by this audit (the table holds its explanations)",
        "reference scans": (f"{sha256_note(reference_table)}: {len(reference)} scans" if reference is not None
                            else f"none: the {len(cohort)} audited scans are their own reference (--reference-table to give one)"),
        "scans": len(cohort),
        "explained classes": len(cohort.classes),
        "regions": len(cohort.regions),
        "metadata columns": ", ".join(map(str, cohort.metadata.columns)) or "none",
        "protocol": protocol.label,
    }
    outputs = write_audit_outputs(analysis, out_dir, inputs=inputs, model_audit=False)
    if wandb:
        from agg2exp_lightning.audit.wandb_logging import log_audit_to_wandb

        log_audit_to_wandb(outputs, project=wandb_project, config=config)
    return outputs


def _checked(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, a ValueError (bad protocol or merge) re-raised as the audit's DataError."""
    try:
        return fn(*args)
    except ValueError as err:
        raise DataError(str(err)) from err

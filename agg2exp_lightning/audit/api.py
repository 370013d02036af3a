"""The audit as one Python call: ``audit(model, data, ...)`` returns the cohort analysis (no shell needed)."""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agg2exp_lightning.audit_settings import AuditSettings, checked_settings

if TYPE_CHECKING:
    from agg2exp_lightning.analysis.cohort import CohortAnalysis

log = logging.getLogger(__name__)


def audit(
    model: Any,
    data: str | Path,
    *,
    reference: str | None = "auto",
    out: str | Path | None = None,
    settings: AuditSettings | str | Path | None = None,
    label_map: Any = None,
    weights: str | Path | None = None,
    mapping_file: str | Path | None = None,
    extra_masks: str | Path | None = None,
    accelerator: str = "auto",
    devices: int | str | list[int] = 1,
    strategy: str = "auto",
    num_workers: int = 0,
    overwrite: bool = False,
    explainer: Any = None,
    wandb: bool = False,
    wandb_project: str = "agg2exp-audit",
    wandb_model_artifact: str | None = None,
    bundle_overrides: Sequence[str] | Mapping[str, Any] | None = None,
    folds: Sequence[int | str] | str | None = None,
    checkpoint_name: str | None = None,
    **fields: Any,
) -> CohortAnalysis | None:
    """Explain every scan of a split with ``model`` and audit the cohort; the Python twin of ``agg2exp-audit --model``.

    Args:
        model: this toolkit's checkpoint (``.ckpt``), a MONAI bundle folder or an nnU-Net v2 trained-model
            folder (each run with its own preprocessing and inference), ``"package.module:function"``,
            an ``nn.Module`` (name its classes with ``label_map``) or a
            :class:`~agg2exp_lightning.model_loading.LoadedModel`.
        data: a TotalSegmentator v2 root, or a manifest CSV (``image``, ``label``, metadata columns).
        reference: a split to fit the detectors on and calibrate the scan-level score against
            (the paper: ``"train"``); ``"auto"`` (default, as the CLI's ``--reference-split``): a held-out split
            where the data has one, else the training split with a note that the bound assumes exchangeable
            scans; ``None`` fits them on the audited scans (the ``reference_split`` setting; with ``settings``
            given, ``"auto"`` leaves theirs).
        out: the audit folder (report, tables, figures, per-scan work); rerunning resumes it. ``None``
            writes to a new temporary folder (logged).
        settings: an :class:`~agg2exp_lightning.audit_settings.AuditSettings`, or a JSON/YAML file of its
            fields (:meth:`~agg2exp_lightning.audit_settings.AuditSettings.from_file`); ``fields`` go on top.
        label_map: names of the model's output channels: a JSON/YAML file, a list or a mapping
            (default: the checkpoint's names or the bundle's metadata).
        weights: state dict of a ``package.module:function`` model.
        mapping_file: TotalSegmentator structures -> labels (default: the shipped thorax mapping).
        extra_masks: a folder ``DIR/<subject id>/<name>.<format>`` of per-scan masks added as regions
            (:mod:`agg2exp_lightning.audit.extra_masks`).
        accelerator, devices, strategy: Lightning Trainer settings.
        num_workers: DataLoader workers.
        overwrite: replace another audit's results in ``out``.
        explainer: replaces :func:`~agg2exp_lightning.audit.checkpoint_audit.make_scan_explainer`.
        wandb, wandb_project: also log to one W&B run.
        wandb_model_artifact: the W&B artifact of the audited checkpoint (the audit run uses it).
        bundle_overrides: a MONAI bundle's config overrides, ``KEY=VALUE`` in monai's syntax.
        folds, checkpoint_name: an nnU-Net folder's folds (default: all present) and checkpoint file.
        **fields: :class:`~agg2exp_lightning.audit_settings.AuditSettings` fields, e.g. ``method="sg"``
            (``vanilla_gradient``, ``smoothgrad``, ``integrated_gradients``, ``kernelshap_cubes``,
            ``kernelshap_semantic``, an alias or a registered method), ``method_options={"n_samples": 10}``,
            ``split``, ``targets`` (by name or channel id), ``spacing``, ``roi_size``, ``protocol``,
            ``contamination``, ``detector``, ``random_state``, ``n_dependencies``.

    Returns:
        The :class:`~agg2exp_lightning.analysis.cohort.CohortAnalysis` (table, importance matrix,
        context reliance, dependencies, anomaly scores, Dice correlation, bias tests, extreme cases;
        ``.summary()``, ``.per_scan_frame()``) on rank 0; ``None`` on other DDP ranks.

    Raises:
        DataError: an unreadable model or data, a model that does not fit the data (channels, classes,
            label map), an empty split, no scan finished, or ``out`` holding another audit.

    Example:
        >>> from agg2exp_lightning.audit import audit
        >>> analysis = audit("runs/demo/checkpoints/best.ckpt", "data/synthetic_thorax", method="vanilla_gradient",
        ...                  reference="val", out="runs/audit_demo")  # doctest: +SKIP
        >>> analysis.reliance  # doctest: +SKIP
    """
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit

    if settings is None or reference != "auto":
        fields.setdefault("reference_split", reference)
    checked = checked_settings(settings, fields)  # the one place they are checked, before any folder is made
    if out is None:
        out = tempfile.mkdtemp(prefix="agg2exp-audit-")
        log.info("writing the audit to %s", out)
    outputs = run_checkpoint_audit(
        model, out, weights=weights, label_map=label_map, data=data, mapping_file=mapping_file, extra_masks=extra_masks,
        overwrite=overwrite, accelerator=accelerator, devices=devices, strategy=strategy, num_workers=num_workers, explainer=explainer,
        settings=checked, wandb=wandb, wandb_project=wandb_project, wandb_model_artifact=wandb_model_artifact,
        bundle_overrides=bundle_overrides, folds=folds, checkpoint_name=checkpoint_name,
    )
    return None if outputs is None else outputs.analysis

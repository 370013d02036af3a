"""Audit a model on a set of scans: explain each through ``Trainer.predict``, then analyse.

Scans go through :class:`~agg2exp_lightning.audit.scan_prediction.ScanAuditModule` in
``Trainer.predict`` (any accelerator/devices/strategy, e.g. DDP), each written to
``scans/<id>.json`` (reference scans to ``reference_scans/``) as it finishes. A re-run of the same
audit skips finished scans and retries failed ones. Rank 0 then assembles the records into the
published table format and writes the same outputs as a ``--from-table`` audit, plus slices of the
most and least anomalous scans per class.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from agg2exp_lightning.analysis.cohort import CohortAnalysis, analyze_cohort
from agg2exp_lightning.analysis.detectors import get_detector
from agg2exp_lightning.analysis.figures import case_grid, figure_png
from agg2exp_lightning.audit.output_folder import open_output_folder
from agg2exp_lightning.audit.outputs import AuditOutputs, write_audit_outputs
from agg2exp_lightning.audit.scan_prediction import ScanExplainer
from agg2exp_lightning.audit.scan_records import is_finished, load_records, read_slices, record_stem, records_to_table
from agg2exp_lightning.audit_settings import AuditSettings, checked_settings
from agg2exp_lightning.data.subjects import SubjectRecord
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.utils.files import atomic_write_json

log = logging.getLogger(__name__)

#: Record fields that are not metadata (paths and bookkeeping).
NON_METADATA = frozenset({"image", "label", "labels", "image_id", "split", "series"})
#: Folder of each set of scans.
SET_FOLDERS = {"audited": "scans", "reference": "reference_scans"}


class PerScanTransform:
    """The toolkit's deterministic preprocessing (:class:`~agg2exp_lightning.model_loading.ToolkitRunner`), with
    labels for scans that have them."""

    def __init__(self, mapping: Mapping[str, Sequence[str]], num_classes: int, spacing: Sequence[float],
                 class_names: Sequence[str] | None = None, crop_to_body: bool = True,
                 extra_masks: tuple[Sequence[str], Mapping[str, Mapping[str, Path]]] | None = None) -> None:
        from agg2exp_lightning.model_loading import ToolkitRunner

        self._transform = ToolkitRunner(spacing, crop_to_body=crop_to_body).record_transform(
            mapping, num_classes, class_names, extra_masks=extra_masks)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return self._transform(item)


def _predict(module: Any, items: list[dict[str, Any]], out: Path, transform: Any, trainer_kwargs: Mapping[str, Any], num_workers: int) -> int:
    """Run Trainer.predict over ``items``; returns this process's global rank."""
    import lightning.pytorch as pl
    from monai.data import list_data_collate
    from torch.utils.data import DataLoader

    from agg2exp_lightning.audit.scan_prediction import ScanDataset, ScanRecordWriter

    writer = ScanRecordWriter({k: out / v for k, v in SET_FOLDERS.items()}, total=len(items))
    trainer = pl.Trainer(**{"accelerator": "auto", "devices": 1, "strategy": "auto", **trainer_kwargs}, inference_mode=False,
                         logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[writer],
                         enable_progress_bar=log.isEnabledFor(logging.INFO))  # a bar per scan with its ETA; off under -q
    loader = DataLoader(ScanDataset(items, transform), batch_size=1, num_workers=num_workers, collate_fn=list_data_collate)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    if trainer.world_size > 1:
        trainer.strategy.barrier("audit-scans-written")
    return trainer.global_rank


def _case_figures(analysis: CohortAnalysis, folder: Path) -> list[tuple[str, bytes]]:
    """Per class, slices of its most and least anomalous scans (where slices were stored)."""
    figures = []
    for i, cls in enumerate(analysis.table.classes):
        rows = []
        for case in analysis.extremes[analysis.extremes["class"] == cls].itertuples(index=False):
            try:
                bundle = read_slices(folder / f"{record_stem(case.id)}.slices.npz")
            except DataError as err:
                log.warning("left out of the case figures: %s", err)
                continue
            if bundle is None or i >= len(bundle["index"]):
                continue
            label = f"{case.id}\n{case.end.replace('_', ' ')} #{case.rank}\nscore {case.score:.3f}, slice {int(bundle['index'][i])}"
            rows.append((label, bundle["image"][i], bundle["prediction"][i], bundle["attribution"][i]))
        if rows:
            fig = case_grid(rows, title=f"{cls}: most and least anomalous scans")
            figures.append((f"{cls}: image, prediction and |attribution| on the slice with the most attribution mass", figure_png(fig, dpi=80)))
    return figures


def run_scan_audit(
    model: nn.Module,
    class_names: Sequence[str],
    sets: Mapping[str, Sequence[SubjectRecord]],
    out_dir: str | Path,
    *,
    explainer: ScanExplainer,
    config: Mapping[str, Any],
    spacing: Sequence[float] | None,
    mapping: Mapping[str, Sequence[str]],
    inputs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    trainer_kwargs: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    settings: AuditSettings | None = None,
    wandb: bool = False,
    wandb_project: str = "agg2exp-audit",
    model_file: str | Path | None = None,
    wandb_model_artifact: str | None = None,
    extra_masks: tuple[Sequence[str], Mapping[str, Mapping[str, Path]]] | None = None,
    reference_notes: Sequence[str] = (),
    runner: Any = None,
    **fields: Any,
) -> AuditOutputs | None:
    """Explain the scans of ``sets`` with ``model`` and audit the ``"audited"`` set.

    Args:
        model: ``image [1, C_in, *S] -> logits [1, C, *S]``.
        class_names: the model's ``C`` class names.
        sets: ``"audited"`` records and, optionally, ``"reference"`` records to fit the
            detectors on.
        out_dir: output folder; resumed if it holds this audit (same ``config``).
        explainer: see :data:`~agg2exp_lightning.audit.scan_prediction.ScanExplainer`.
        config: JSON-serialisable description of the audit (its fingerprint names the folder's audit).
        spacing: resampling spacing in mm of the preprocessing.
        mapping: label -> TotalSegmentator structures (for the TotalSegmentator layout).
        inputs: extra rows for the report's "What was audited" table.
        overwrite: replace another audit's results in ``out_dir``.
        trainer_kwargs: ``accelerator``, ``devices``, ``strategy`` ... for ``lightning.Trainer``.
        num_workers: DataLoader workers.
        settings: the audit's :class:`~agg2exp_lightning.audit_settings.AuditSettings` (checked where built).
            Read here: the analysis fields, ``protocol`` (also the crop to the body), ``merges`` (``{region:
            members}`` joined before the analysis), ``save_maps`` (each audited scan's attribution maps and
            prediction as NIfTI in its own grid, ``maps/``, see :mod:`~agg2exp_lightning.audit.maps`; refused
            before any work when the folder cannot hold the estimated size) and ``figures_for`` (scan ids
            drawn in three views beside the worklist's; needs ``save_maps``).
        wandb: also log tables and figures to one W&B run.
        wandb_project: the W&B project.
        model_file: the audited checkpoint, named as the W&B audit's input (see
            :func:`~agg2exp_lightning.audit.wandb_logging.log_audit_to_wandb`).
        wandb_model_artifact: the W&B artifact of the audited model (e.g. ``model-<run id>:best``).
        extra_masks: ``(names, {subject id: {name: path}})`` from
            :func:`~agg2exp_lightning.audit.extra_masks.find_extra_masks`: regions after the classes.
        runner: how scans reach the model and its maps come back
            (:class:`~agg2exp_lightning.model_loading.ScanRunner`); default the toolkit's preprocessing at
            ``spacing`` (crop to the body as the protocol says).
        reference_notes: notes on the reference set for the summary and report (e.g. the training
            split's exchangeability caveat, :mod:`~agg2exp_lightning.audit.reference`).
        **fields: :class:`~agg2exp_lightning.audit_settings.AuditSettings` fields set on top of ``settings``.

    Returns:
        The written outputs on rank 0; ``None`` on other DDP ranks.

    Raises:
        DataError: no audited (or reference) scan finished, ``out_dir`` holds another audit, or (with
            ``save_maps``) the maps would not fit on its file system.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from agg2exp_lightning.audit.scan_prediction import ScanAuditModule

    settings = checked_settings(settings, fields)
    save_maps, figures_for = settings.save_maps, settings.figures_for
    if "audited" not in sets or set(sets) - set(SET_FOLDERS):
        raise ValueError(f"Expected `sets` with key 'audited' and optionally 'reference', got {sorted(sets)}")
    out = Path(out_dir)
    maps_folder = out / "maps"
    if runner is None:
        from agg2exp_lightning.model_loading import ToolkitRunner

        runner = ToolkitRunner(spacing, crop_to_body=settings.protocol.crop_to_body)
    if save_maps and rank_zero_only.rank == 0:
        from agg2exp_lightning.audit.maps import check_room_for_maps, estimate_map_bytes, maps_written

        todo = [r.image for r in sets["audited"] if not maps_written(maps_folder, r.subject_id)]
        log.info("--save-maps: %d scans; %s", len(todo), check_room_for_maps(out, estimate_map_bytes(todo, len(class_names))))
    if rank_zero_only.rank == 0:  # other DDP ranks are started by rank 0 after this point
        open_output_folder(out, config, overwrite=overwrite)
    for name in SET_FOLDERS.values():
        (out / name).mkdir(parents=True, exist_ok=True)
    map_writer = None
    if save_maps:
        from agg2exp_lightning.audit.maps import MapWriter, maps_written, write_colour_table

        write_colour_table(maps_folder, class_names)
        map_writer = MapWriter(maps_folder, class_names, runner=runner)
    pending = [{**dataclasses.asdict(r), "audit_set": s} for s, recs in sets.items() for r in recs
               if not is_finished(out / SET_FOLDERS[s], r.subject_id)
               or (save_maps and s == "audited" and not maps_written(maps_folder, r.subject_id))]
    n_all = sum(len(v) for v in sets.values())
    log.info("%d of %d scans to explain (%d finished earlier)", len(pending), n_all, n_all - len(pending))
    if pending:
        module = ScanAuditModule(model, explainer, class_names, map_writer=map_writer,
                                 extra_mask_names=list(extra_masks[0]) if extra_masks else (),
                                 voxel_ml=math.prod(float(v) for v in spacing) / 1000.0 if spacing else None)
        transform = runner.record_transform(mapping, len(class_names), class_names, extra_masks=extra_masks)
        if _predict(module, pending, out, transform, dict(trainer_kwargs or {}), num_workers) != 0:
            return None

    meta = {r.subject_id: {k: v for k, v in r.metadata.items() if k not in NON_METADATA} for recs in sets.values() for r in recs}
    finished, failures = {}, {}
    for s, recs in sets.items():
        finished[s], failed = load_records(out / SET_FOLDERS[s], [r.subject_id for r in recs])
        failures.update({f"{s}:{k}": v for k, v in failed.items()})
        for sid, err in failed.items():
            log.warning("%s scan %s failed: %s", s, sid, err)
    atomic_write_json(out / "failed_scans.json", failures)
    for s, done in finished.items():
        if not done:
            raise DataError(f"no {s} scan finished; failures are listed in {out / 'failed_scans.json'}")
    tables = {s: records_to_table(done, meta, source=f"{s} scans in {out / SET_FOLDERS[s]}") for s, done in finished.items()}
    analysis = analyze_cohort(tables["audited"], tables.get("reference"), settings,
                              reference_notes=reference_notes if "reference" in tables else ())
    rows = {
        **dict(inputs or {}),
        "spacing (mm)": ", ".join(f"{v:g}" for v in spacing) if spacing else "the model source's own preprocessing",
        f"{get_detector(settings.detector).label} fitted on": f"reference scans ({len(tables['reference'])})" if "reference" in tables else "the audited scans",
        "scans audited": f"{len(tables['audited'])} of {len(sets['audited'])}",
        "failed scans": ", ".join(failures) or "none",
    }
    done = {str(rec["id"]) for rec in finished["audited"]}
    unlabelled = [r.subject_id for r in sets["audited"] if not r.labels and r.subject_id in done]
    if unlabelled:  # audited as usual; only Dice, and the anomaly-Dice correlations, need labels
        rows["scans without labels"] = (f"{len(unlabelled)} of {len(done)}: {', '.join(unlabelled)}; they have no Dice, "
                                        "so the anomaly-Dice correlations use the labelled scans only (the scan-level score, "
                                        "worklist, bias tests, region shares and maps need no labels)")
    if extra_masks:  # the paper's pathology analysis: which classes' explanations lean on each extra region
        from agg2exp_lightning.audit.extra_masks import classes_leaning_on

        leaning = classes_leaning_on(analysis.importance, analysis.table.classes, analysis.table.regions, extra_masks[0])
        rows["extra regions: classes leaning most on each (mean share of their attribution mass)"] = "; ".join(
            f"{name}: " + (", ".join(f"{c} {v:.3f}" for c, v in pairs) or "no class") for name, pairs in leaning.items())
    links: dict[str, str] = {}
    if save_maps:
        from agg2exp_lightning.audit.maps import maps_status

        written, no_maps = maps_status(maps_folder, [r.subject_id for r in sets["audited"]])
        for sid, why in no_maps.items():
            log.warning("scan %s has no maps: %s", sid, why)
        rows["maps (NIfTI, each scan's own grid)"] = (f"{maps_folder} ({len(written)} scans)"
                                                      + (f"; without maps: {', '.join(no_maps)}" if no_maps else ""))
        from agg2exp_lightning.audit.scan_figures import scan_figures_for_audit

        worklist = [str(row["id"]) for row in getattr(analysis, "worklist", None) or []]
        index = scan_figures_for_audit(out, {r.subject_id: r.image for r in sets["audited"]}, worklist + list(figures_for),
                                       class_names, series={r.subject_id: r.metadata["series"] for r in sets["audited"]
                                                            if r.metadata.get("series")})
        if index is not None:
            rows["three-view figures (linked to the NIfTI maps)"] = str(index)
            links["three-view figures of the worklist's scans, linked to their NIfTI maps"] = Path(index).relative_to(out).as_posix()
    elif figures_for:
        log.warning("--figures-for draws from the NIfTI maps: add --save-maps (no three-view figures drawn)")
    outputs = write_audit_outputs(analysis, out, inputs=rows, case_figures=_case_figures(analysis, out / SET_FOLDERS["audited"]),
                                  links=links)
    if wandb:
        from agg2exp_lightning.audit.wandb_logging import log_audit_to_wandb

        log_audit_to_wandb(outputs, project=wandb_project, config=config, model_artifact=wandb_model_artifact,
                           model_file=model_file)
    return outputs

"""Audit a model on a dataset (``--model``: a checkpoint, MONAI bundle or factory): load, pick the splits, run the scan audit."""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agg2exp_lightning.analysis.regions import resolve_merges
from agg2exp_lightning.audit.outputs import AuditOutputs
from agg2exp_lightning.audit.reference import TRAINING_REFERENCE_NOTE, choose_reference_split
from agg2exp_lightning.audit.scan_prediction import ScanExplainer
from agg2exp_lightning.audit_settings import AuditSettings, checked_settings
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading.loading import DEFAULT_SPACING  # noqa: F401 - the default spacing, named here as before
from agg2exp_lightning.utils.files import file_sha256

log = logging.getLogger(__name__)


def make_scan_explainer(method: str, options: Mapping[str, Any] | None = None, roi_size: Sequence[int] | None = None, *,
                      targets: Sequence[int] | None = None, window: Mapping[str, Any] | None = None) -> ScanExplainer:
    """:func:`agg2exp_lightning.explain.explain` with the method and its options bound.

    Args:
        method: the attribution method (aliases accepted).
        options: its keyword options (``--method-option``).
        roi_size: sliding-window size (``None``: whole volumes).
        targets: class ids to explain (default: every class).
        window: further sliding-window keywords of ``explain`` (``sw_batch_size``, ``overlap``, ``mode``).

    Raises:
        DataError: the explain package is not available, the method is unknown, or an option is
            not one the method (or :func:`~agg2exp_lightning.explain.explain`) accepts.
    """
    import inspect

    try:
        from agg2exp_lightning.explain import explain, get_method
    except ImportError as err:
        raise DataError(f"checkpoint audits need agg2exp_lightning.explain.explain, which cannot be imported: {err}") from err
    try:
        spec = get_method(method)
    except ValueError as err:
        raise DataError(f"--method: {err}") from err
    name = spec.name
    allowed = set(spec.options) | {
        p for p, v in inspect.signature(explain).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options or {}) - allowed)
    if unknown:
        raise DataError(f"--method-option: {unknown} not accepted by method {name!r}; accepted: {sorted(allowed)}")
    return _bound_explainer(name, options, roi_size, targets=targets, window=window)


def _bound_explainer(name: str, options: Mapping[str, Any] | None, roi_size: Sequence[int] | None, *,
                     targets: Sequence[int] | None, window: Mapping[str, Any] | None) -> ScanExplainer:
    """``explain`` with a checked method name (canonical) and options bound (see :func:`make_scan_explainer`)."""
    from agg2exp_lightning.explain import explain

    bound = {**{k: v for k, v in dict(window or {}).items() if k != "roi_size"}, **dict(options or {})}
    if targets is not None:
        bound["targets"] = list(targets)
    # a bar over the sample batches of sampled methods (SmoothGrad, IG, KernelSHAP) with its ETA, unless -q
    bound.setdefault("progress", log.isEnabledFor(logging.INFO))
    return functools.partial(explain, method=name, roi_size=None if roi_size is None else tuple(roi_size), **bound)


def _model_for_data(loaded: Any, mapping: Mapping[str, Sequence[str]], mapping_name: str, thorax: bool) -> None:
    """Refuse a model that cannot audit this data: CT has one channel, and TotalSegmentator structures are
    merged into labels that must be among the model's classes.

    Raises:
        DataError: naming the model source and what was expected.
    """
    where = f"{'checkpoint' if loaded.kind == 'checkpoint' else loaded.kind} {loaded.source}"
    if loaded.in_channels is not None and loaded.in_channels != 1:
        raise DataError(f"{where}: expected a model with in_channels=1 (CT scans have one channel), but it has in_channels={loaded.in_channels}")
    if not thorax:
        return
    wanted = len(mapping) + 1
    if loaded.num_classes != wanted:
        raise DataError(f"{where}: expected a model with num_classes={wanted} (background and the {len(mapping)} labels the "
                        f"TotalSegmentator structures are merged into by {mapping_name}), but it has num_classes={loaded.num_classes}")
    lacking = [label for label in mapping if label not in loaded.class_names[1:]]
    if lacking:
        raise DataError(f"{where}: its classes {list(loaded.class_names)} lack the labels {lacking} of {mapping_name}; give --label-map "
                        "naming its output channels as the mapping names them, or --mapping-file for its labels")


def run_checkpoint_audit(
    model: Any,
    out_dir: str | Path,
    *,
    weights: str | Path | None = None,
    label_map: Any = None,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    mapping_file: str | Path | None = None,
    extra_masks: str | Path | None = None,
    overwrite: bool = False,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    num_workers: int = 0,
    explainer: ScanExplainer | None = None,
    settings: AuditSettings | None = None,
    wandb: bool = False,
    wandb_project: str = "agg2exp-audit",
    wandb_model_artifact: str | None = None,
    bundle_overrides: Sequence[str] | Mapping[str, Any] | None = None,
    folds: Sequence[int | str] | str | None = None,
    checkpoint_name: str | None = None,
    **fields: Any,
) -> AuditOutputs | None:
    """Explain every scan of a split with a model and audit the cohort.

    Args:
        model: the model: this toolkit's checkpoint, a MONAI bundle folder or nnU-Net v2 folder (each run with its
            own preprocessing, inference and maps back, :class:`~agg2exp_lightning.model_loading.ScanRunner`;
            ``audit.json`` records it under ``runner``), ``package.module:function``, an
            ``nn.Module`` (with ``label_map``), or a :class:`~agg2exp_lightning.model_loading.LoadedModel`
            (see :func:`~agg2exp_lightning.model_loading.load_model`; weights read with ``weights_only=True``).
        out_dir: output folder; resumed if it holds this audit, refused if another (see ``overwrite``).
        weights: state dict of a ``package.module:function`` model.
        label_map: names of the model's output channels (file, list or mapping); default: the source's.
        data: a TotalSegmentator v2 root or a manifest CSV.
        manifest: a manifest CSV (columns ``image``, ``label``, metadata); overrides ``data``.
        mapping_file: TotalSegmentator structure mapping (default: the shipped one).
        extra_masks: a folder ``DIR/<subject id>/<name>.<format>`` (NIfTI, NRRD, MetaImage, DICOM) of per-scan masks added as regions
            (:mod:`agg2exp_lightning.audit.extra_masks`); every file is checked against its scan's grid
            before anything is written.
        overwrite: replace another audit's results in ``out_dir``.
        accelerator, devices, strategy: Lightning Trainer settings (e.g. ``"ddp"`` on 2 devices).
        num_workers: DataLoader workers.
        explainer: overrides :func:`make_scan_explainer` (same call signature).
        settings: the audit's :class:`~agg2exp_lightning.audit_settings.AuditSettings` (checked where built):
            the method and its options, the splits (``reference_split="auto"``: a held-out split such as ``val``
            where the data has one besides the audited split, else ``train`` with a note that the bound assumes
            exchangeable scans, :func:`~agg2exp_lightning.audit.reference.choose_reference_split`), spacing (default: the model source's, else 1.5 mm), window
            (default: the source's), the protocol (also the explanations' KernelSHAP spread and IG rule), merges
            (checked against the model's classes and the extra masks before anything is written), the detector
            and the analysis' settings, ``save_maps`` and ``figures_for``.
        wandb: also log tables and figures to one W&B run.
        wandb_project: the W&B project.
        wandb_model_artifact: the W&B artifact of the checkpoint (e.g. ``model-<run id>:best`` from training with
            ``log_model``): the audit run uses it, so W&B shows the lineage model -> audit (online).
        bundle_overrides: a MONAI bundle's config overrides (``KEY=VALUE``, monai's syntax); part of the model's
            identity in ``audit.json``, like ``weights``.
        folds, checkpoint_name: an nnU-Net v2 folder's folds (default: all present) and checkpoint file.
        **fields: :class:`~agg2exp_lightning.audit_settings.AuditSettings` fields set on top of ``settings``
            (e.g. ``method="vg"``, ``split="test"``, ``spacing=(8, 8, 8)``).

    Returns:
        The written outputs (with the analysis) on rank 0; ``None`` on other ranks.

    Raises:
        DataError: missing or unreadable model/data, a model that does not fit the data, empty split,
            no scan finished, or an output folder of another audit.

    Example:
        >>> run_checkpoint_audit("model.ckpt", "runs/audit", data="data/synthetic_thorax")  # doctest: +SKIP
    """
    from agg2exp_lightning.audit.outputs import sha256_note
    from agg2exp_lightning.audit.scan_audit import run_scan_audit
    from agg2exp_lightning.data.subjects import discover_records, manifest_records, select_split
    from agg2exp_lightning.labels import DEFAULT_MAPPING_FILE, load_structure_mapping, resolve_targets
    from agg2exp_lightning.model_loading import LoadedModel, load_model

    settings = checked_settings(settings, fields)
    targets, split, reference_split = settings.targets, settings.split, settings.reference_split
    if data is None and manifest is None:
        raise DataError("an audit of a model needs --data (dataset root or manifest) or --manifest")
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, weights=weights, label_map=label_map, bundle_overrides=bundle_overrides, folds=folds, checkpoint_name=checkpoint_name)
    source = manifest if manifest is not None else data
    records = manifest_records(manifest) if manifest is not None else discover_records(data)
    mapping = load_structure_mapping(mapping_file)
    # TotalSegmentator subjects are merged into the mapping's labels: the model must predict those.
    thorax = any(r.layout == "totalsegmentator" for r in records)
    _model_for_data(loaded, mapping, f"structure mapping {mapping_file or DEFAULT_MAPPING_FILE}", thorax)
    target_ids = resolve_targets(targets, loaded.class_names, argument="--targets") if targets is not None else None
    if target_ids is not None:  # channel order, as the analysis orders classes (and the case figures their slices)
        target_ids = sorted(target_ids)
    runner = loaded.scan_runner(spacing=settings.spacing, roi_size=settings.roi_size, crop_to_body=settings.protocol.crop_to_body)
    for note in runner.notes:
        log.info("%s", note)
    spacing = getattr(runner, "spacing", None) or loaded.spacing
    window = dict(runner.window)
    roi = window.get("roi_size")
    sets = {"audited": select_split(records, split, source=source)}
    reference_notes: list[str] = []
    if reference_split == "auto":  # a held-out split where there is one, else the training split with a note
        reference_split, note = choose_reference_split(split, {r.split for r in records})
        log.info("reference scans: %s", f"split {reference_split!r}" if reference_split else "none (the audited scans are their own reference)")
        reference_notes += [note] if note else []
    elif reference_split == "train":
        reference_notes.append(TRAINING_REFERENCE_NOTE.format(split="train"))
    if reference_split is not None:
        sets["reference"] = select_split(records, reference_split, source=source)
    masks = None
    if extra_masks is not None:
        from agg2exp_lightning.audit.extra_masks import find_extra_masks

        masks = find_extra_masks(extra_masks, [r for recs in sets.values() for r in recs], loaded.class_names)
    try:
        merged = resolve_merges(settings.merges, [*loaded.class_names, *(masks[0] if masks else [])])
    except ValueError as err:
        raise DataError(str(err)) from err
    chosen = settings.protocol
    settings = AuditSettings.build(settings, merges=merged)
    method, method_options = settings.method, settings.method_options
    fingerprinted = {k: v for k, v in settings.fingerprint_fields().items() if k != "targets"}
    from agg2exp_lightning.explain.precision import precision_choice
    from agg2exp_lightning.utils.hardware import device_type

    try:  # what the explanations' passes run at on this device (precision "auto": bf16 only where native), and why
        precision = precision_choice(dict(method_options or {}).get("precision", "auto"), device_type(accelerator))
    except ValueError as err:
        raise DataError(f"--method-option precision: {err}") from err
    config = {
        "mode": "checkpoint" if loaded.kind == "checkpoint" else loaded.kind, **loaded.identity,
        "data": str(Path(source).resolve()),
        "manifest_sha256": file_sha256(manifest) if manifest is not None else None, **fingerprinted,
        "reference_split": reference_split,
        "spacing": list(spacing) if spacing else None, "roi_size": list(roi) if roi is not None else None,
        "runner": runner.settings(),
        "mapping_sha256": file_sha256(mapping_file) if mapping_file else None,
        **({"targets": target_ids} if target_ids is not None else {}),
        **({"sliding_window": {k: (list(v) if isinstance(v, tuple) else v) for k, v in window.items() if k != "roi_size"}}
           if roi is not None else {}),
        "protocol": chosen.as_dict(), "merges": {k: list(v) for k, v in merged.items()},
        "precision": {"asked": precision.asked, "used": precision.used},  # the reason (names the CPU) is in the report
        **({"extra_masks": {sid: {n: file_sha256(p) for n, p in f.items()} for sid, f in masks[1].items()}} if masks else {}),
    }
    digest = next((f"SHA-256 {v}" for k, v in loaded.identity.items() if k.endswith("sha256")), None)
    inputs = {"model": f"{loaded.source} ({loaded.kind}{f'; {digest}' if digest else ''})", "classes": ", ".join(loaded.class_names),
              "data": sha256_note(manifest) if manifest is not None else str(source),
              "reference scans": f"split {reference_split!r}" if reference_split else "none: the audited scans are their own reference",
              "split": split, "method": method, "method options": json.dumps(dict(method_options or {})),
              "sliding window": "x".join(map(str, roi)) if roi is not None else "none (whole volumes)", "protocol": chosen.label,
              "precision": f"{precision.used} (asked {precision.asked}: {precision.why})",
              "preprocessing and inference": _runner_text(runner)}
    if target_ids is not None:
        inputs["explained classes"] = ", ".join(loaded.class_names[i] for i in target_ids)
    return run_scan_audit(
        loaded.model, loaded.class_names, sets, out_dir,
        explainer=explainer if explainer is not None else _bound_explainer(settings.method_name, {**method_options, "protocol": chosen}, roi,
                                                                         targets=target_ids, window=window),
        config=config, spacing=spacing, mapping=mapping, inputs=inputs, overwrite=overwrite,
        trainer_kwargs={"accelerator": accelerator, "devices": devices, "strategy": strategy}, num_workers=num_workers,
        settings=settings, wandb=wandb, wandb_project=wandb_project, wandb_model_artifact=wandb_model_artifact,
        model_file=loaded.source if loaded.kind == "checkpoint" else None, extra_masks=masks, reference_notes=reference_notes,
        runner=runner,
    )


def _runner_text(runner: Any) -> str:
    """The report's line on what produced the prediction."""
    settings = runner.settings()
    if settings["runner"] == "toolkit":
        return "the toolkit's (RAS, spacing, HU window [-1024, 1024] to [0, 1]" + (", crop to the body)" if settings["crop_to_body"] else ")")
    extra = "; ".join(runner.notes)
    return f"the model's own ({settings['runner']})" + (f"; {extra}" if extra else "")

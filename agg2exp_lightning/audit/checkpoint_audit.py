"""Audit a trained checkpoint on a dataset (``--checkpoint``): load, pick the splits, run the scan audit."""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agg2exp_lightning.analysis.anomaly import DEFAULT_RANDOM_STATE
from agg2exp_lightning.audit.output_folder import file_sha256
from agg2exp_lightning.audit.outputs import AuditOutputs
from agg2exp_lightning.audit.scan_prediction import Explainer
from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)

#: Spacing (mm) when neither the caller nor the checkpoint gives one (the paper's).
DEFAULT_SPACING = (1.5, 1.5, 1.5)


def default_explainer(method: str, options: Mapping[str, Any] | None = None, roi_size: Sequence[int] | None = None) -> Explainer:
    """:func:`agg2exp_lightning.explain.explain` with the method and its options bound.

    Raises:
        DataError: the explain package is not available, the method is unknown, or an option is
            not one the method (or :func:`~agg2exp_lightning.explain.explain`) accepts.
    """
    import inspect

    try:
        from agg2exp_lightning.explain import METHOD_OPTIONS, explain, resolve_method_name
    except ImportError as err:
        raise DataError(f"checkpoint audits need agg2exp_lightning.explain.explain, which cannot be imported: {err}") from err
    try:
        name = resolve_method_name(method)
    except ValueError as err:
        raise DataError(f"--method: {err}") from err
    allowed = set(METHOD_OPTIONS.get(name, ())) | {
        p for p, v in inspect.signature(explain).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options or {}) - allowed)
    if unknown:
        raise DataError(f"--method-option: {unknown} not accepted by method {name!r}; accepted: {sorted(allowed)}")
    return functools.partial(explain, method=method, roi_size=None if roi_size is None else tuple(roi_size), **dict(options or {}))


def checkpoint_spacing(path: str | Path) -> tuple[float, float, float] | None:
    """The training spacing stored with the data module's hyper-parameters, if any (``weights_only``)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        spacing = ckpt.get("datamodule_hyper_parameters", {}).get("spacing")
        return tuple(float(s) for s in spacing) if spacing is not None else None
    except Exception:  # unreadable checkpoints are reported by the model loader; spacing falls back
        return None


def load_audit_model(checkpoint: str | Path, *, num_classes: int | None = None) -> Any:
    """The :class:`~agg2exp_lightning.model.SegmentationModule` of a checkpoint (``weights_only``), for
    one input channel (CT) and, if given, ``num_classes`` classes.

    Raises:
        DataError: naming the file and what was expected: missing, not a torch checkpoint (or one
            holding objects that would need unpickling), a checkpoint of another model, or of another
            number of classes or channels.
    """
    from agg2exp_lightning.model import load_segmentation_checkpoint

    model = load_segmentation_checkpoint(checkpoint)  # names the file and what does not fit
    for name, wanted, why in (("in_channels", 1, "CT scans have one channel"),
                              ("num_classes", num_classes, "the data's structures are merged into the thorax labels")):
        got = int(model.hparams.get(name, -1))
        if wanted is not None and got != wanted:
            raise DataError(f"checkpoint {checkpoint}: expected a model with {name}={wanted} ({why}), but it has {name}={got}")
    return model


def run_checkpoint_audit(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    method: str = "smoothgrad",
    method_options: Mapping[str, Any] | None = None,
    split: str = "test",
    reference_split: str | None = None,
    spacing: Sequence[float] | None = None,
    roi_size: Sequence[int] | None = None,
    mapping_file: str | Path | None = None,
    overwrite: bool = False,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    num_workers: int = 0,
    random_state: int = DEFAULT_RANDOM_STATE,
    n_dependencies: int = 12,
    explainer: Explainer | None = None,
    wandb: bool = False,
    wandb_project: str = "agg2exp-audit",
    save_maps: bool = False,
    figures_for: Sequence[str] = (),
) -> AuditOutputs | None:
    """Explain every scan of a split with a trained model and audit the cohort.

    Args:
        checkpoint: Lightning checkpoint of a
            :class:`~agg2exp_lightning.model.SegmentationModule` (loaded with ``weights_only=True``).
        out_dir: output folder; resumed if it holds this audit, refused if another (see ``overwrite``).
        data: a TotalSegmentator v2 root or a manifest CSV.
        manifest: a manifest CSV (columns ``image``, ``label``, metadata); overrides ``data``.
        method: attribution method passed to the explainer (e.g. ``smoothgrad``).
        method_options: keyword options of the method (e.g. ``{"n_samples": 10}``).
        split: the split to audit.
        reference_split: a split to fit the Isolation Forests on (paper: ``train``); ``None`` fits
            on the audited scans.
        spacing: resampling spacing in mm; default the training data module's, else 1.5 mm.
        roi_size: sliding-window size of the explanations (default: the model's ``roi_size``).
        mapping_file: TotalSegmentator structure mapping (default: the shipped one).
        overwrite: replace another audit's results in ``out_dir``.
        accelerator, devices, strategy: Lightning Trainer settings (e.g. ``"ddp"`` on 2 devices).
        num_workers: DataLoader workers.
        random_state: seed of the Isolation Forests.
        n_dependencies: how many region -> class dependencies to report.
        explainer: overrides :func:`default_explainer` (same call signature).
        wandb: also log tables and figures to one W&B run.
        wandb_project: the W&B project.
        save_maps: write each audited scan's maps as NIfTI in its own grid (see :mod:`~agg2exp_lightning.audit.maps`).
        figures_for: scan ids drawn in three views besides the worklist's (needs ``save_maps``).

    Returns:
        The written outputs on rank 0; ``None`` on other ranks.

    Raises:
        DataError: missing or unreadable checkpoint/data, empty split, no scan finished, or an
            output folder of another audit.

    Example:
        >>> run_checkpoint_audit("model.ckpt", "runs/audit", data="data/synthetic_thorax")  # doctest: +SKIP
    """
    from agg2exp_lightning.audit.scan_audit import run_scan_audit
    from agg2exp_lightning.data.subjects import discover_records, manifest_records, select_split
    from agg2exp_lightning.labels import THORAX_CLASSES, load_structure_mapping

    if data is None and manifest is None:
        raise DataError("a checkpoint audit needs --data (dataset root or manifest) or --manifest")
    checkpoint = Path(checkpoint)
    source = manifest if manifest is not None else data
    records = manifest_records(manifest) if manifest is not None else discover_records(data)
    # TotalSegmentator subjects are merged into the thorax labels: the model must predict exactly those.
    thorax = any(r.layout == "totalsegmentator" for r in records)
    model = load_audit_model(checkpoint, num_classes=len(THORAX_CLASSES) if thorax else None)
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (checkpoint_spacing(checkpoint) or DEFAULT_SPACING)
    roi_size = tuple(int(r) for r in (roi_size if roi_size is not None else model.hparams.roi_size))
    sets = {"audited": select_split(records, split, source=source)}
    if reference_split is not None:
        sets["reference"] = select_split(records, reference_split, source=source)
    config = {
        "mode": "checkpoint", "checkpoint_sha256": file_sha256(checkpoint), "data": str(Path(source).resolve()),
        "manifest_sha256": file_sha256(manifest) if manifest is not None else None, "method": method,
        "method_options": dict(method_options or {}), "split": split, "reference_split": reference_split,
        "spacing": list(spacing), "roi_size": list(roi_size), "random_state": random_state,
        "n_dependencies": n_dependencies, "mapping_sha256": file_sha256(mapping_file) if mapping_file else None,
    }
    inputs = {"checkpoint": str(checkpoint), "data": str(source), "split": split, "method": method,
              "method options": json.dumps(dict(method_options or {})), "sliding window": "x".join(map(str, roi_size))}
    return run_scan_audit(
        model, model.class_names, sets, out_dir,
        explainer=explainer if explainer is not None else default_explainer(method, method_options, roi_size),
        config=config, spacing=spacing, mapping=load_structure_mapping(mapping_file), inputs=inputs, overwrite=overwrite,
        trainer_kwargs={"accelerator": accelerator, "devices": devices, "strategy": strategy}, num_workers=num_workers,
        random_state=random_state, n_dependencies=n_dependencies, wandb=wandb, wandb_project=wandb_project,
        save_maps=save_maps, figures_for=figures_for,
    )

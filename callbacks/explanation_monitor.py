"""ExplanationMonitor: Agg2Exp RoI importance of fixed validation scans, every N epochs, while training."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from agg2exp_lightning.callbacks._plumbing import gather_objects, log_figure, log_masked_images, log_scalars, log_table, run_folder
from agg2exp_lightning.callbacks.contract import (
    ExplanationCheck,
    class_names_of,
    deliver,
    explained_network,
    reference_dataset,
    sliding_window_options,
    validation_dataset,
    volume,
)
from agg2exp_lightning.errors import NonFiniteError
from agg2exp_lightning.labels import resolve_targets
from agg2exp_lightning.protocols import DEFAULT_PROTOCOL, get_protocol

log = logging.getLogger(__name__)


class ExplanationMonitor(Callback):
    """Explain a fixed set of validation scans every ``every_n_epochs`` and log their RoI importance.

    Logs the global RoI importance heatmap (targets x regions), each target's own-region and background
    shares as scalars (curves over epochs), the drift of the global matrix since the last check, a table
    of per-scan shares, and an attribution overlay for the chosen classes. The history and the chosen
    scans are saved in checkpoints, so a resumed run continues its curves.

    Args:
        every_n_epochs: run after the validation of every N-th epoch.
        method: attribution method of :func:`agg2exp_lightning.explain.explain`.
        method_options: options for the method (e.g. ``{"n_samples": 5}``).
        protocol: ``"corrected"`` (default) or ``"paper"`` (:mod:`agg2exp_lightning.protocols`), passed to
            ``explain``; recorded in the ``roi_shares`` table and the history.
        targets: classes to explain (names or ids; default: all).
        num_scans: validation scans to follow (the first ``num_scans`` by subject id, chosen once).
        reference_scans: training scans explained too, as the fitting set of :class:`AnomalyMonitor`
            (0: none; the anomaly monitor then fits on the validation scans).
        max_seconds: time budget per call; scans past it are skipped (and counted).
        overlay_classes: classes whose attribution is drawn over the first scan's slices (default: the
            first foreground target; ``[]`` for none).
        at_train_end: also run once when training ends (if the last epoch was not a check).
        save_maps: also write each explained validation scan's attribution maps and prediction as NIfTI in
            the scan's own grid, to ``<run>/agg2exp/maps/epoch<NNN>/`` (see :mod:`agg2exp_lightning.audit.maps`;
            the data must be loaded by this toolkit's preprocessing, which records the file's grid).
        name: a name for this monitor, needed only when one Trainer holds several: it prefixes the logged
            keys (``agg2exp/<name>/...``), keeps the monitor's state apart in checkpoints (``state_key``) and
            is the ``source`` that :class:`AnomalyMonitor` follows.

    What the monitor reads from the model and the data is written down in
    :mod:`agg2exp_lightning.callbacks.contract`; its results go to the consumers listed there.

    Example:
        >>> trainer = pl.Trainer(callbacks=[ExplanationMonitor(every_n_epochs=5, targets=["trachea", "heart"])])
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        method: str = "vanilla_gradient",
        method_options: dict[str, Any] | None = None,
        targets: Sequence[int | str] | None = None,
        num_scans: int = 4,
        reference_scans: int = 0,
        max_seconds: float | None = None,
        overlay_classes: Sequence[str] | None = None,
        at_train_end: bool = True,
        save_maps: bool = False,
        name: str | None = None,
        protocol: str = DEFAULT_PROTOCOL,
    ) -> None:
        super().__init__()
        self.protocol = get_protocol(protocol)  # an unknown name fails here, with the valid ones
        for argument, value, low in (("every_n_epochs", every_n_epochs, 1), ("num_scans", num_scans, 1), ("reference_scans", reference_scans, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"Expected argument `{argument}` to be an integer >= {low}, but got {value!r}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"Expected argument `max_seconds` to be positive or None, but got {max_seconds!r}")
        self.every_n_epochs = every_n_epochs
        self.method = method
        self.method_options = dict(method_options or {})
        self.targets = targets
        self.num_scans = num_scans
        self.reference_scans = reference_scans
        self.max_seconds = max_seconds
        self.overlay_classes = None if overlay_classes is None else tuple(overlay_classes)
        self.at_train_end = at_train_end
        self.save_maps = bool(save_maps)
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"Expected argument `name` to be a non-empty string without '/', or None, but got {name!r}")
        self.name = name
        self.prefix = "agg2exp" if name is None else f"agg2exp/{name}"
        # state saved in checkpoints
        self.scan_ids: list[str] = []
        self.history: list[dict[str, Any]] = []
        # set up per run
        self.latest: ExplanationCheck | None = None
        self._target_ids: list[int] = []
        self._class_names: list[str] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, method=self.method, targets=self.targets)

    # -- set-up -------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from agg2exp_lightning.explain import resolve_method_name

        resolve_method_name(self.method)  # unknown method: clear error now, not at epoch 50
        names = class_names_of(pl_module)
        self._class_names = names
        self._target_ids = resolve_targets(self.targets, names)
        if self.overlay_classes is None:
            self.overlay_classes = tuple(names[t] for t in self._target_ids if t != 0)[:1]
        if self.overlay_classes:  # an empty list draws no overlay
            resolve_targets(self.overlay_classes, names, argument="overlay_classes")
        if stage == "fit":
            self._check_data(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_data(trainer)  # loaders passed to fit() directly are known only now, still before any step

    def _check_data(self, trainer: pl.Trainer) -> None:
        dataset = validation_dataset(trainer)
        if dataset is not None and len(dataset) < self.num_scans:
            raise ValueError(
                f"ExplanationMonitor: `num_scans`={self.num_scans} but the validation set holds only {len(dataset)} scans"
            )

    @property
    def target_ids(self) -> list[int]:
        """The class ids explained (known after ``setup``)."""
        return list(self._target_ids)

    @property
    def target_names(self) -> list[str]:
        """The names of the classes explained (known after ``setup``)."""
        return [self._class_names[i] for i in self._target_ids]

    @property
    def region_names(self) -> list[str]:
        """The regions (every class of the model) the mass is shared among."""
        return list(self._class_names)

    # -- hooks --------------------------------------------------------------------------------
    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.run_check(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_train_end and (not self.history or self.history[-1]["step"] != trainer.global_step):
            if validation_dataset(trainer) is not None:
                self.run_check(trainer, pl_module)

    # -- the work -----------------------------------------------------------------------------
    def _choose_scans(self, dataset) -> list[int]:
        ids = [volume(dataset[i])[1] for i in range(len(dataset))]
        if not self.scan_ids:
            self.scan_ids = sorted(ids)[: self.num_scans]
        missing = [s for s in self.scan_ids if s not in ids]
        if missing:
            raise ValueError(f"ExplanationMonitor: scans {missing} chosen earlier are no longer in the validation set")
        return [ids.index(s) for s in self.scan_ids]

    def _explain_items(
        self, pl_module, dataset, indices, deadline, maps_writer: Any = None
    ) -> tuple[list[tuple[str, np.ndarray, dict, dict]], int, dict, list[str]]:
        """Explain ``dataset[indices]``: ``(done, skipped by the budget, overlay data, non-finite scan ids)``;
        ``done`` holds ``(id, shares, metadata, evidence)`` (the audit's evidence families,
        :func:`~agg2exp_lightning.analysis.evidence.scan_evidence`); with ``maps_writer``, each scan's maps
        are written as NIfTI in its own grid."""
        from agg2exp_lightning.analysis.evidence import scan_evidence, voxel_ml_from_affine
        from agg2exp_lightning.explain import explain

        window = sliding_window_options(pl_module)
        net = explained_network(pl_module)
        done, skipped, overlay, nonfinite = [], 0, {}, []
        for i in indices:
            if deadline is not None and time.monotonic() > deadline:
                skipped += 1
                continue
            item = dataset[i]
            image, sid, meta = volume(item)
            want_maps = (not overlay and bool(self.overlay_classes)) or maps_writer is not None
            try:
                with torch.inference_mode(False):
                    x = image.detach().clone().to(pl_module.device)
                    result = explain(net, x, method=self.method, targets=self._target_ids, keep_attributions=True,  # for the evidence
                                     protocol=self.protocol, **window, **self.method_options)
            except NonFiniteError as err:
                # NaN/infinite logits, image or attributions: a diverging model must be reported, not kill
                # the training run. Any other error is a real bug and propagates.
                log.warning("ExplanationMonitor: scan %s left out at epoch %d: %s", sid, pl_module.current_epoch, err)
                nonfinite.append(sid)
                continue
            roi = result.roi.detach().cpu().double().numpy()
            if not np.all(np.isfinite(roi) | np.isnan(roi)):
                log.warning("ExplanationMonitor: non-finite shares for scan %s", sid)
            first = item[0] if isinstance(item, list) else item
            evidence = scan_evidence(result, image, result.targets, voxel_ml_from_affine(getattr(first["image"], "affine", None)))
            done.append((sid, roi, meta, evidence))
            if maps_writer is not None and result.attributions is not None:
                maps_writer(sid, getattr(first["image"], "meta", {}), result.attributions.detach().cpu(),
                            result.prediction.detach().cpu(), self._target_ids)
            if want_maps and result.attributions is not None:
                overlay = {"image": image[0].cpu().numpy(), "prediction": result.prediction.cpu().numpy(),
                           "attributions": result.attributions.detach().cpu().numpy(), "subject_id": sid}
        return done, skipped, overlay, nonfinite

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ExplanationCheck | None:
        """Explain the chosen scans now (split across ranks), log, and hand the check to the consumers."""
        dataset = validation_dataset(trainer)
        if dataset is None:
            return None
        start = time.monotonic()
        deadline = None if self.max_seconds is None else start + self.max_seconds
        indices = self._choose_scans(dataset)
        rank, world = trainer.global_rank, trainer.world_size
        was_training = pl_module.training
        pl_module.eval()
        try:
            maps_writer = None
            if self.save_maps:
                from agg2exp_lightning.audit.maps import MapWriter, write_colour_table

                folder = run_folder(trainer) / "maps" / f"epoch{trainer.current_epoch:03d}"
                if trainer.is_global_zero:
                    write_colour_table(folder, self._class_names)
                maps_writer = MapWriter(folder, self._class_names)
            mine, skipped, overlay, nonfinite = self._explain_items(pl_module, dataset, indices[rank::world], deadline, maps_writer)
            ref: list[tuple[str, np.ndarray, dict, dict]] = []
            if self.reference_scans:
                ds = reference_dataset(trainer, self.reference_scans)
                if ds is not None:
                    ref, ref_skipped, _, ref_nonfinite = self._explain_items(
                        pl_module, ds, list(range(len(ds)))[rank::world], deadline
                    )
                    skipped += ref_skipped
                    nonfinite += ref_nonfinite
        finally:
            pl_module.train(was_training)
        gathered = gather_objects((mine, ref, skipped, nonfinite))
        val = sorted((x for g in gathered for x in g[0]), key=lambda t: t[0])
        refs = sorted((x for g in gathered for x in g[1]), key=lambda t: t[0])
        skipped = sum(g[2] for g in gathered)
        nonfinite = sorted(sid for g in gathered for sid in g[3])
        if not val:
            log_scalars(trainer, {f"{self.prefix}/scans_nonfinite": float(len(nonfinite))})
            why = f"{len(nonfinite)} non-finite ({', '.join(nonfinite)})" if nonfinite else "none within the time budget"
            log.warning("ExplanationMonitor: no scan explained at epoch %d: %s", trainer.current_epoch, why)
            return None
        check = ExplanationCheck(
            epoch=trainer.current_epoch,
            subject_ids=[v[0] for v in val],
            roi=np.stack([v[1] for v in val]),
            metadata=[v[2] for v in val],
            reference_ids=[r[0] for r in refs],
            reference_roi=np.stack([r[1] for r in refs]) if refs else None,
            evidence=_stack_evidence([v[3] for v in val]),
            reference_evidence=_stack_evidence([r[3] for r in refs]) if refs else None,
            skipped=skipped,
            nonfinite=nonfinite,
            target_ids=self.target_ids,
            target_names=self.target_names,
            region_names=self.region_names,
            source=self.name,
        )
        self.latest = check
        self._log(trainer, check, overlay, time.monotonic() - start)
        deliver(trainer, pl_module, check)
        return check

    # -- logging ------------------------------------------------------------------------------
    def _log(self, trainer: pl.Trainer, check: ExplanationCheck, overlay: dict, seconds: float) -> None:
        import pandas as pd

        from agg2exp_lightning.analysis.figures import importance_heatmap
        from agg2exp_lightning.analysis.importance import global_roi_importance

        glob = global_roi_importance(check.roi)  # [T, R], NaN-aware mean over scans
        previous = np.asarray(self.history[-1]["global"], dtype=float) if self.history else None
        drift = float(np.nanmean(np.abs(glob - previous))) if previous is not None and previous.shape == glob.shape else None
        p = self.prefix
        metrics: dict[str, float] = {f"{p}/seconds": seconds, f"{p}/scans_skipped": float(check.skipped),
                                     f"{p}/scans_nonfinite": float(len(check.nonfinite))}
        if drift is not None:
            metrics[f"{p}/drift"] = drift
        for t, cls in zip(self._target_ids, self.target_names):
            row = self._target_ids.index(t)
            metrics[f"{p}/own_share/{cls}"] = float(glob[row, t])
            metrics[f"{p}/background_share/{cls}"] = float(glob[row, 0])
        log_scalars(trainer, metrics)
        if trainer.is_global_zero:
            self.history.append({"epoch": check.epoch, "step": trainer.global_step, "global": glob.tolist(), "drift": drift,
                                 "scan_ids": list(check.subject_ids), "protocol": self.protocol.as_dict()})
            log_figure(trainer, f"{p}/global_roi_importance", importance_heatmap(glob, self.target_names, self.region_names))
            frame = pd.DataFrame(
                [[sid, a, b, check.roi[n, i, j]] for n, sid in enumerate(check.subject_ids)
                 for i, a in enumerate(self.target_names) for j, b in enumerate(self.region_names)],
                columns=["subject_id", "target", "region", "mass_share"],
            ).assign(protocol=self.protocol.label).set_index("subject_id")
            log_table(trainer, f"{p}/roi_shares", frame)
            if overlay:
                self._log_overlay(trainer, overlay)
        else:
            self.history.append({"epoch": check.epoch, "step": trainer.global_step, "global": glob.tolist(), "drift": drift,
                                 "scan_ids": list(check.subject_ids), "protocol": self.protocol.as_dict()})

    def _log_overlay(self, trainer: pl.Trainer, overlay: dict) -> None:
        from agg2exp_lightning.analysis.figures import case_grid

        rows = []
        for cls in self.overlay_classes:
            c = self._class_names.index(cls)
            if c not in self._target_ids:
                continue
            attribution = overlay["attributions"][self._target_ids.index(c)]
            z = int(np.abs(attribution).reshape(-1, attribution.shape[-1]).sum(0).argmax())  # axial slice of most mass
            rows.append((f"{cls} (z={z})", overlay["image"][..., z], overlay["prediction"][..., z], attribution[..., z]))
        if rows:
            title = f"{overlay['subject_id']}: attributions, epoch {trainer.current_epoch}"
            log_figure(trainer, f"{self.prefix}/overlay", case_grid(rows, title=title))
            labels = dict(enumerate(self._class_names))
            masks = []
            for caption, _, prediction, attribution in rows:
                magnitude = np.abs(attribution)
                top = magnitude >= np.quantile(magnitude, 0.9) if magnitude.max() > 0 else np.zeros_like(magnitude, bool)
                masks.append({"prediction": {"mask_data": prediction.astype(np.uint8), "class_labels": labels},
                              "top_attribution": {"mask_data": top.astype(np.uint8),
                                                  "class_labels": {1: f"top 10% |attribution| of {caption.split(' ')[0]}"}}})
            log_masked_images(trainer, f"{self.prefix}/overlay_masks", [r[1] for r in rows], masks,
                              [f"{overlay['subject_id']}: {r[0]}" for r in rows])

    # -- checkpoint state ---------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"scan_ids": list(self.scan_ids), "history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scan_ids = list(state_dict.get("scan_ids", []))
        self.history = list(state_dict.get("history", []))


def _stack_evidence(per_scan: Sequence[dict[str, dict[str, list[float]]]]) -> dict[str, np.ndarray]:
    """Per-scan evidence records as family -> ``[N, T, F]`` (NaN where not computable)."""
    from agg2exp_lightning.analysis.evidence import FAMILIES, family_matrix

    if not per_scan:
        return {}
    n_classes = len(next(iter(per_scan[0]["prediction"].values())))
    return {fam: np.stack([family_matrix(ev.get(fam), fam, n_classes) for ev in per_scan]) for fam in FAMILIES}

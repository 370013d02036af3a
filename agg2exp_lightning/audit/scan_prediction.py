"""Per-scan audit work through Lightning: ``Trainer.predict`` explains each scan, a
:class:`~lightning.pytorch.callbacks.BasePredictionWriter` writes its record.

Under DDP every rank explains its own share of the scans (Lightning's distributed sampler) and
writes each finished scan to its own file, so nothing is gathered in memory and a killed audit
keeps what it finished. Gradient attributions need autograd, which Lightning's prediction loop
turns off: the Trainer must be built with ``inference_mode=False`` (as
:func:`~agg2exp_lightning.audit.checkpoint_audit.run_checkpoint_audit` does), and
:class:`ScanAuditModule` re-enables gradients around each explanation.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn

from agg2exp_lightning.analysis.evidence import scan_evidence
from agg2exp_lightning.audit.scan_records import record_stem, scan_record, slice_bundle
from agg2exp_lightning.segmentation_metrics import dice_per_class
from agg2exp_lightning.utils import atomic_write_bytes, atomic_write_json, plain_tensor

log = logging.getLogger(__name__)

#: The audit's explainer, its method and targets fixed when it is made (:func:`~agg2exp_lightning.audit.checkpoint_audit.make_scan_explainer`;
#: the method comparison's :data:`~agg2exp_lightning.evaluation.compare.MethodAttributor` takes them per call and returns only maps):
#: ``explainer(model, image [1, C_in, *S]) -> result`` with ``result.roi [T, R]``,
#: ``result.roi_mean [T, R]``, ``result.prediction [*S]`` (or ``[1, *S]``) and optionally
#: ``result.attribution [T, *S]``; the API of :func:`agg2exp_lightning.explain.explain`.
ScanExplainer = Callable[[nn.Module, Tensor], Any]


class ScanDataset(torch.utils.data.Dataset):
    """Scans to audit; a scan that fails to load becomes an ``error`` item instead of stopping the run.

    Args:
        items: dicts of :class:`~agg2exp_lightning.data.subjects.SubjectRecord` fields plus
            ``audit_set`` (``"audited"`` or ``"reference"``).
        transform: the deterministic preprocessing (e.g.
            :func:`agg2exp_lightning.data.transforms.preprocessing` composed).
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.items = [dict(i) for i in items]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            out = dict(self.transform(dict(item)))
        except Exception as err:  # a broken scan must not stop the others
            message = _describe(err)
            log.warning("scan %s could not be loaded: %s", item["subject_id"], message)
            return {"subject_id": item["subject_id"], "audit_set": item["audit_set"], "error": message}
        out["audit_set"] = item["audit_set"]
        return out


def _describe(err: BaseException) -> str:
    """``Type: message`` of the first DataError in the chain, else of the innermost cause (MONAI wraps
    transform errors in a RuntimeError)."""
    from agg2exp_lightning.errors import find_data_error, root_cause

    found = find_data_error(err) or root_cause(err)
    return f"{type(found).__name__}: {found}"


#: Item key of the body mask on the model's grid, from a model source whose intensities are not the toolkit's
#: (:meth:`~agg2exp_lightning.model_loading.ScanRunner.scan_item`).
BODY_KEY = "body"


def _scan_image(images: Any, index: int) -> Any:
    """Item ``index`` of a collated batch of MetaTensors with its own metadata and applied operations
    (what mapping its maps back needs); its batch metadata when it is no MetaTensor."""
    if hasattr(images, "applied_operations"):
        from monai.data import decollate_batch

        return decollate_batch(images, detach=True)[index]
    return getattr(images, "meta", {})


def _plain(x: Any) -> Tensor:
    return torch.as_tensor(plain_tensor(x))


class ScanAuditModule(pl.LightningModule):
    """Explains each scan of a predict batch and returns its record (or its failure).

    Args:
        model: the segmentation model (``image -> logits``), in eval mode.
        explainer: see :data:`ScanExplainer`.
        class_names: names of the model's classes (label-id order).
        save_slices: also return slices for the anomaly-case figures (when the explainer gives
            attribution maps).
        map_writer: writes each audited scan's maps in its own grid
            (:class:`~agg2exp_lightning.audit.maps.MapWriter`; ``None``: no maps).
        extra_mask_names: names of the extra masks (regions after the classes).
        voxel_ml: volume of one voxel in ml (``None``: predicted volumes are not computable).

    Each record also holds the evidence families beside the shares (:mod:`~agg2exp_lightning.analysis.evidence`):
    the prediction's per-class volume, components, softmax confidence and entropy, and the attribution's
    per-class mass and share outside the body; a feature that cannot be computed is stored as null.
    """

    def __init__(self, model: nn.Module, explainer: ScanExplainer, class_names: Sequence[str], *, save_slices: bool = True,
                 map_writer: Callable[..., Any] | None = None, extra_mask_names: Sequence[str] = (),
                 voxel_ml: float | None = None) -> None:
        super().__init__()
        self.voxel_ml = voxel_ml  # volume of one voxel of the model's grid, for the predicted volumes
        self.model = model
        self.explainer = explainer
        self.class_names = list(class_names)
        self.save_slices = save_slices
        self.map_writer = map_writer
        self.extra_mask_names = list(extra_mask_names)  # batch["extra_masks"] [B, K, *S]: regions after the classes

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image)

    def _explain_one(self, image: Tensor, label: Tensor | None, sid: str, meta: Any = None, index: int = 0,
                     extra: Tensor | None = None, body: Tensor | None = None) -> dict[str, Any]:
        kwargs = {} if extra is None else {"extra_masks": {n: extra[k] > 0.5 for k, n in enumerate(self.extra_mask_names)}}
        with torch.inference_mode(False), torch.enable_grad():
            result = self.explainer(self.model, image.detach().clone(), **kwargs)
        prediction = _plain(result.prediction).reshape(image.shape[2:]).long().cpu()
        roi, roi_mean = _plain(result.roi).float().cpu(), _plain(result.roi_mean).float().cpu()
        t = roi.shape[0]
        # rows are the explained classes (result.targets, e.g. from --targets), else the first t classes
        ids = [int(i) for i in getattr(result, "targets", None) or range(t)]
        n_extra = 0 if extra is None else len(self.extra_mask_names)
        classes = [self.class_names[i] for i in ids]
        regions = self.class_names[: roi.shape[1] - n_extra] + (self.extra_mask_names if n_extra else [])
        dice = None
        if label is not None:
            dice = dice_per_class(prediction, label.reshape(prediction.shape).long().cpu(), len(self.class_names))[ids]
        attribution = getattr(result, "attribution", None)
        evidence = scan_evidence(result, image, ids, self.voxel_ml, body=body)
        out: dict[str, Any] = {"record": scan_record(sid, classes, regions, roi, roi_mean, dice, evidence=evidence)}
        if self.save_slices and attribution is not None:
            attr = _plain(attribution).detach().float().cpu().reshape(t, *prediction.shape).numpy()
            out["slices"] = slice_bundle(image[0, 0].detach().float().cpu().numpy(), prediction.numpy(), attr)
        if self.map_writer is not None and meta is not None and attribution is not None:
            self.map_writer(sid, meta, _plain(attribution).detach().float().cpu().reshape(t, *prediction.shape), prediction, ids,
                            index=index, model=self.model)
        return out

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        outputs = []
        for i, sid in enumerate(batch["subject_id"]):
            audit_set = batch["audit_set"][i]
            if "error" in batch:
                outputs.append({"audit_set": audit_set, "failure": {"id": sid, "error": batch["error"][i]}})
                continue
            try:
                image = _plain(batch["image"])[i : i + 1].float()
                label = _plain(batch["label"])[i] if "label" in batch else None
                meta = _scan_image(batch["image"], i) if audit_set == "audited" else None
                extra = _plain(batch["extra_masks"])[i] if "extra_masks" in batch else None
                body = _plain(batch[BODY_KEY])[i] if BODY_KEY in batch else None  # sources with their own intensities
                outputs.append({"audit_set": audit_set, **self._explain_one(image, label, sid, meta, i, extra, body)})
            except Exception as err:  # report the scan, keep auditing the others
                log.warning("scan %s failed: %s", sid, _describe(err))
                outputs.append({"audit_set": audit_set, "failure": {"id": sid, "error": _describe(err)}})
        return outputs


def _duration(seconds: float) -> str:
    """``"1 h 05 min"``, ``"4 min 10 s"`` or ``"12 s"``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class ScanRecordWriter(BasePredictionWriter):
    """Writes each scan's record as soon as its batch ends, atomically, on the rank that made it.

    Args:
        folders: ``audit_set -> folder`` (e.g. ``{"audited": out/"scans", "reference": out/"reference_scans"}``).
        total: number of scans in this run, over all ranks (for progress messages).
    """

    def __init__(self, folders: Mapping[str, Path], total: int) -> None:
        super().__init__(write_interval="batch")
        self.folders = {k: Path(v) for k, v in folders.items()}
        self.total = total
        self.done = 0
        self._start: float | None = None
        self._mine = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        batches = trainer.num_predict_batches
        self._mine = int(sum(batches)) if isinstance(batches, (list, tuple)) else int(batches or 0)

    def eta_seconds(self) -> float | None:
        """Seconds this rank still needs at its mean pace so far (``None`` before the first scan)."""
        if self._start is None or not self.done:
            return None
        return (time.monotonic() - self._start) / self.done * max(self._mine - self.done, 0)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        for item in prediction:
            folder = self.folders[item["audit_set"]]
            if "failure" in item:
                sid = item["failure"]["id"]
                atomic_write_json(folder / f"{record_stem(sid)}.failed.json", item["failure"])
                log.warning("scan %s failed (rank %d): %s", sid, trainer.global_rank, item["failure"]["error"])
            else:
                sid = item["record"]["id"]
                if "slices" in item:
                    atomic_write_bytes(folder / f"{record_stem(sid)}.slices.npz", item["slices"])
                atomic_write_json(folder / f"{record_stem(sid)}.json", item["record"])
                (folder / f"{record_stem(sid)}.failed.json").unlink(missing_ok=True)
            self.done += 1
            eta = self.eta_seconds()
            left = "" if eta is None else f", about {_duration(eta)} left"
            log.info("scan %s written (rank %d: %d of %d scans%s; %d in this run over all ranks)", sid, trainer.global_rank,
                     self.done, self._mine or self.total, left, self.total)


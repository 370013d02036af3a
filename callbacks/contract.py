"""What the monitors need from the model, the data and each other, written down in one place.

The monitor callbacks read nothing private from each other and nothing unstated from the
LightningModule or the data. This module is that contract:

- **The model** (:class:`MonitoredModule`): ``class_names`` (else ``hparams["num_classes"]``),
  optionally ``net`` (the network to explain; the module itself otherwise), optionally
  ``last_val_dice`` (subject id -> per-class Dice of the last validation epoch, for the anomaly
  monitor's correlation), optionally sliding-window settings in ``hparams`` (``roi_size``,
  ``sw_mode``, ``sw_overlap``, ``sw_batch_size``). :class:`~agg2exp_lightning.model.SegmentationModule`
  has all of them.
- **The data** (:class:`MonitoredDataModule`): the validation scans come from the data module's
  ``datasets["val"]`` when it has one, else from the Trainer's validation loader's dataset. Each
  item is a dict with ``image`` ``[1, *S]``, ``subject_id`` and optional ``metadata``. Reference
  (training) scans come from ``whole_volume_dataset("train", max_subjects=n)`` when the data module
  offers it.
- **The monitors**: an :class:`ExplanationCheck` (from the explanation monitor) and an
  :class:`AnomalyCheck` (from the anomaly monitor) carry everything their consumers need. A producer
  hands its result to every callback of the Trainer that implements :class:`ExplanationConsumer` or
  :class:`AnomalyConsumer` and whose ``source`` is ``None`` or the producer's ``name``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch

from agg2exp_lightning.utils import plain_tensor

__all__ = [
    "AnomalyCheck",
    "AnomalyConsumer",
    "ExplanationCheck",
    "ExplanationConsumer",
    "MonitoredDataModule",
    "MonitoredModule",
    "class_names_of",
    "deliver",
    "explained_network",
    "per_scan_dice",
    "reference_dataset",
    "sliding_window_options",
    "validation_dataset",
    "volume",
]


# -- the results the monitors pass on ------------------------------------------------------------
@dataclass
class ExplanationCheck:
    """The explanations of one monitoring call (gathered from every rank).

    Attributes:
        epoch: the epoch it ran at.
        subject_ids: ``N`` validation scans explained.
        roi: ``[N, T, R]`` mass shares e_{b->a} per scan (NaN where undefined).
        metadata: per-scan metadata dicts.
        reference_ids / reference_roi: the training scans explained as a reference for anomaly
            detectors (``[M, T, R]``; empty when none were asked for).
        skipped: scans left out by the time budget.
        nonfinite: scans left out because the model's logits or attributions on them were NaN or infinite.
        target_ids: the ``T`` class ids explained (rows of ``roi``).
        target_names: their names.
        region_names: the ``R`` region (class) names (columns of ``roi``).
        source: the ``name`` of the monitor that made it (``None`` when unnamed).
        evidence / reference_evidence: the evidence families beside the shares, family -> ``[N, T, F]``
            (``[M, T, F]`` for the reference; :mod:`~agg2exp_lightning.analysis.evidence`), NaN where not computable.
    """

    epoch: int
    subject_ids: list[str]
    roi: np.ndarray
    metadata: list[dict[str, str]]
    reference_ids: list[str] = field(default_factory=list)
    reference_roi: np.ndarray | None = None
    skipped: int = 0
    nonfinite: list[str] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)
    region_names: list[str] = field(default_factory=list)
    source: str | None = None
    evidence: dict[str, np.ndarray] = field(default_factory=dict)
    reference_evidence: dict[str, np.ndarray] | None = None


@dataclass
class AnomalyCheck:
    """The anomaly scores of one check, handed to :class:`AnomalyConsumer` callbacks.

    Attributes:
        epoch: the epoch of the explanations scored.
        subject_ids: the ``N`` validation scans scored.
        metadata: their metadata dicts.
        result: the :class:`~agg2exp_lightning.analysis.anomaly.AnomalyResult` (scores, outliers, classes).
        correlation: Spearman rho between score and Dice per class (``None`` without per-scan Dice).
        fitted_on: ``"reference"`` or ``"validation"``.
        source: the ``name`` of the explanation monitor the scores come from.
    """

    epoch: int
    subject_ids: list[str]
    metadata: list[dict[str, str]]
    result: Any
    correlation: Any = None
    fitted_on: str = "validation"
    source: str | None = None


@runtime_checkable
class ExplanationConsumer(Protocol):
    """A callback that receives each :class:`ExplanationCheck` (e.g. :class:`AnomalyMonitor`)."""

    source: str | None

    def on_explanations(self, trainer: pl.Trainer, pl_module: pl.LightningModule, check: ExplanationCheck) -> None:
        ...


@runtime_checkable
class AnomalyConsumer(Protocol):
    """A callback that receives each :class:`AnomalyCheck` (e.g. :class:`BiasMonitor`)."""

    source: str | None

    def on_anomalies(self, trainer: pl.Trainer, pl_module: pl.LightningModule, check: AnomalyCheck) -> None:
        ...


def deliver(trainer: pl.Trainer, pl_module: pl.LightningModule, check: ExplanationCheck | AnomalyCheck) -> int:
    """Hand ``check`` to every consumer callback of the Trainer that wants it; the number reached."""
    kind, hook = (ExplanationConsumer, "on_explanations") if isinstance(check, ExplanationCheck) else (AnomalyConsumer, "on_anomalies")
    reached = 0
    for callback in trainer.callbacks:
        if isinstance(callback, kind) and callback.source in (None, check.source):
            getattr(callback, hook)(trainer, pl_module, check)
            reached += 1
    return reached


def find_source(trainer: pl.Trainer, kind: type, source: str | None, needed_by: str) -> Any:
    """The Trainer's callback of type ``kind`` named ``source``; ValueError at set-up if none or ambiguous."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, kind)]
    if source is not None:
        found = [cb for cb in found if getattr(cb, "name", None) == source]
    if not found:
        named = f" named {source!r}" if source is not None else ""
        raise ValueError(f"{needed_by} needs a {kind.__name__}{named} in the Trainer's callbacks; add one")
    if len(found) > 1:
        names = [getattr(cb, "name", None) for cb in found]
        raise ValueError(
            f"{needed_by}: the Trainer has {len(found)} {kind.__name__}s ({names}); give each a `name` and pass "
            f"`source=` to say which one {needed_by} follows"
        )
    return found[0]


# -- the model -----------------------------------------------------------------------------------
@runtime_checkable
class MonitoredModule(Protocol):
    """The LightningModule as the monitors read it (only ``class_names`` is required; see the module doc)."""

    class_names: Sequence[str]


@runtime_checkable
class MonitoredDataModule(Protocol):
    """A data module whose ``datasets["val"]`` holds the validation scans."""

    datasets: Mapping[str, Any]


def class_names_of(pl_module: pl.LightningModule) -> list[str]:
    """``pl_module.class_names``, else ``class_<i>`` for ``hparams["num_classes"]``; ValueError without either."""
    names = list(getattr(pl_module, "class_names", None) or [])
    if names:
        return names
    num = getattr(pl_module, "hparams", {}).get("num_classes")
    if num is None:
        raise ValueError(
            f"{type(pl_module).__name__} has neither `class_names` nor hparams['num_classes']; the monitors need one "
            "of them to name the classes"
        )
    return [f"class_{i}" for i in range(int(num))]


def explained_network(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The network the monitors explain: ``pl_module.net`` if it has one, else the module itself."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, torch.nn.Module) else pl_module


def sliding_window_options(pl_module: pl.LightningModule) -> dict[str, Any]:
    """Sliding-window settings of :func:`~agg2exp_lightning.explain.explain` from ``hparams`` (empty: whole volume)."""
    hp = getattr(pl_module, "hparams", {})
    if "roi_size" not in hp:
        return {}
    window: dict[str, Any] = {"roi_size": tuple(hp["roi_size"])}
    if "sw_mode" in hp:
        window.update(mode=hp["sw_mode"], overlap=hp.get("sw_overlap", 0.25), sw_batch_size=hp.get("sw_batch_size", 1))
    return window


def per_scan_dice(pl_module: pl.LightningModule) -> Mapping[str, Any]:
    """``pl_module.last_val_dice`` (subject id -> per-class Dice), empty when the module does not record it."""
    return getattr(pl_module, "last_val_dice", None) or {}


# -- the data ------------------------------------------------------------------------------------
def validation_dataset(trainer: pl.Trainer) -> Any:
    """The validation scans: the data module's ``datasets["val"]``, else the validation loader's dataset, else None."""
    dm = trainer.datamodule
    if isinstance(dm, MonitoredDataModule) and "val" in dm.datasets:
        return dm.datasets["val"]
    try:
        loaders = trainer.val_dataloaders
    except Exception:  # not loaded yet
        loaders = None
    if loaders is None:
        return None
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return loader.dataset


def reference_dataset(trainer: pl.Trainer, max_subjects: int) -> Any:
    """Whole training volumes from the data module's ``whole_volume_dataset`` (None when it has none)."""
    make = getattr(trainer.datamodule, "whole_volume_dataset", None)
    return make("train", max_subjects=max_subjects) if callable(make) else None


def volume(item: Any) -> tuple[torch.Tensor, str, dict[str, str]]:
    """``(image [1, *S], subject id, metadata)`` of one dataset item (the first of a list of crops)."""
    if isinstance(item, list):  # random-crop transforms return lists
        item = item[0]
    image = plain_tensor(item["image"])
    image = torch.as_tensor(image)
    return image, str(item.get("subject_id", "")), dict(item.get("metadata", {}))

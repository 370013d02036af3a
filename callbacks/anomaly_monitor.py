"""AnomalyMonitor: per-class Isolation Forests over the monitored explanations, scored each check."""
from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback

from agg2exp_lightning.callbacks._plumbing import log_scalars, log_table
from agg2exp_lightning.callbacks.explanation_monitor import ExplanationCheck, ExplanationMonitor

log = logging.getLogger(__name__)


def find_callback(trainer: pl.Trainer, kind: type, needed_by: str) -> Any:
    """The trainer's callback of type ``kind``; ValueError at set-up if there is none."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, kind)]
    if not found:
        raise ValueError(f"{needed_by} needs a {kind.__name__} in the Trainer's callbacks; add one")
    return found[0]


class AnomalyMonitor(Callback):
    """Anomaly scores of the validation scans' explanations, with their Spearman correlation to Dice.

    At each :class:`ExplanationMonitor` check it fits one Isolation Forest per target class
    (``random_state=123``, as in the paper) on the reference scans' RoI shares (the training scans the
    explanation monitor explained; without them, the validation scans themselves) and scores the
    validation scans. Logs per-class outlier counts and mean scores, Spearman rho between score and
    validation Dice (when the module records per-scan Dice as ``last_val_dice``), and a table of scores.

    Args:
        random_state: seed of the forests.
    """

    def __init__(self, random_state: int = 123) -> None:
        super().__init__()
        self.random_state = random_state
        self.history: list[dict[str, Any]] = []
        self.latest: dict[str, Any] | None = None
        self._explainer: ExplanationMonitor | None = None
        self._listeners: list[Any] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._explainer = find_callback(trainer, ExplanationMonitor, "AnomalyMonitor")
        self._explainer.add_listener(self)

    def add_listener(self, listener: Any) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def on_explanations(self, trainer: pl.Trainer, pl_module: pl.LightningModule, check: ExplanationCheck) -> None:
        import pandas as pd

        from agg2exp_lightning.analysis.anomaly import class_anomaly_scores
        from agg2exp_lightning.analysis.correlation import anomaly_dice_correlation

        explainer = self._explainer
        targets = explainer.target_names
        reference = check.reference_roi if check.reference_roi is not None and len(check.reference_roi) >= 2 else None
        result = class_anomaly_scores(check.roi, targets, reference, random_state=self.random_state)
        dice_by_scan = getattr(pl_module, "last_val_dice", {}) or {}
        metrics: dict[str, float] = {}
        correlation = None
        if all(sid in dice_by_scan for sid in check.subject_ids):
            dice = np.stack([np.asarray(dice_by_scan[sid], dtype=float)[explainer._target_ids] for sid in check.subject_ids])
            correlation = anomaly_dice_correlation(result.scores, dice, targets)
            for cls, row in correlation.iterrows():
                metrics[f"agg2exp/anomaly_dice_rho/{cls}"] = row["rho"]
        for i, cls in enumerate(targets):
            metrics[f"agg2exp/outliers/{cls}"] = float(result.outliers[:, i].sum())
            metrics[f"agg2exp/anomaly_score_mean/{cls}"] = float(np.nanmean(result.scores[:, i])) if np.isfinite(result.scores[:, i]).any() else float("nan")
        metrics["agg2exp/outliers_any"] = float(result.any_outlier.sum())
        log_scalars(trainer, metrics)
        frame = pd.DataFrame(result.scores, index=pd.Index(check.subject_ids, name="subject_id"), columns=[f"{c}_score" for c in targets])
        for i, cls in enumerate(targets):
            frame[f"{cls}_outlier"] = result.outliers[:, i]
        log_table(trainer, "agg2exp/anomaly_scores", frame)
        self.latest = {"epoch": check.epoch, "result": result, "subject_ids": check.subject_ids, "metadata": check.metadata,
                       "correlation": correlation, "fitted_on": "reference" if reference is not None else "validation"}
        self.history.append({"epoch": check.epoch, "outliers_any": int(result.any_outlier.sum()),
                             "rho": None if correlation is None else {k: (None if v != v else float(v)) for k, v in correlation["rho"].items()}})
        for listener in self._listeners:
            listener.on_anomalies(trainer, pl_module, self.latest)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

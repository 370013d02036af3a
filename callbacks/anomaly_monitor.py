"""AnomalyMonitor: per-class anomaly detectors (Isolation Forests by default) over the monitored explanations, scored each check."""
from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from agg2exp_lightning.analysis.anomaly import DEFAULT_SCORE_TAIL, check_score_tail
from agg2exp_lightning.analysis.detectors import DEFAULT_DETECTOR, DEFAULT_SCORE_DETECTOR
from agg2exp_lightning.callbacks._plumbing import log_scalars, log_table
from agg2exp_lightning.callbacks.contract import AnomalyCheck, ExplanationCheck, deliver, find_source, per_scan_dice
from agg2exp_lightning.callbacks.explanation_monitor import ExplanationMonitor

log = logging.getLogger(__name__)


class AnomalyMonitor(Callback):
    """Anomaly scores of the validation scans' explanations, with their Spearman correlation to Dice.

    At each :class:`ExplanationMonitor` check it fits one Isolation Forest per target class
    (``random_state=123``, as in the paper) on the reference scans' RoI shares (the training scans the
    explanation monitor explained; without them, the validation scans themselves) and scores the
    validation scans. Logs per-class outlier counts and mean scores, Spearman rho between score and
    validation Dice (when the module records per-scan Dice as ``last_val_dice``), and a table of scores.

    The explanations arrive as an :class:`~agg2exp_lightning.callbacks.contract.ExplanationCheck`
    (``on_explanations``); the scores go on as an :class:`~agg2exp_lightning.callbacks.contract.AnomalyCheck`
    to every :class:`~agg2exp_lightning.callbacks.contract.AnomalyConsumer` (e.g. :class:`BiasMonitor`).

    Args:
        random_state: seed of the forests.
        source: the ``name`` of the :class:`ExplanationMonitor` to follow (needed only when the Trainer
            holds several).
        evidence: the evidence families of the scan-level score, as the audit's ``--evidence``
            (``"shares,prediction,attribution"``, default all; :mod:`~agg2exp_lightning.analysis.evidence`):
            the same scoring code as the audit's.
        detector: the per-class anomaly detector, as the audit's ``--detector``
            (:data:`~agg2exp_lightning.analysis.detectors.DETECTORS`; default the paper's Isolation Forest).
        score_detector: the detector of the scan-level score, as the audit's ``--score-detector``
            (default the robust distance).
        score_tail: how its per-class p reads a score beyond every reference score, as the audit's
            ``--score-tail`` (``"exponential"``, default, or ``"conformal"``).
    """

    def __init__(self, random_state: int = 123, source: str | None = None, evidence: str | list[str] | None = None,
                 detector: str = DEFAULT_DETECTOR, score_detector: str = DEFAULT_SCORE_DETECTOR,
                 score_tail: str = DEFAULT_SCORE_TAIL) -> None:
        super().__init__()
        from agg2exp_lightning.analysis.detectors import get_detector
        from agg2exp_lightning.analysis.evidence import parse_evidence
        self.evidence = parse_evidence(evidence)
        self.detector = get_detector(detector).name
        self.score_detector = get_detector(score_detector, "score_detector").name
        self.score_tail = check_score_tail(score_tail)
        self.random_state = random_state
        self.source = source
        self.prefix = "agg2exp" if source is None else f"agg2exp/{source}"
        self.history: list[dict[str, Any]] = []
        self.latest: AnomalyCheck | None = None
        #: the calibrated scan-level score of the latest check (``None`` with fewer than
        #: :data:`~agg2exp_lightning.analysis.anomaly.MIN_REFERENCE_SCANS` reference or validation scans)
        self.latest_scan: Any = None
        self._skip_said = False

    @property
    @override
    def state_key(self) -> str:
        other = {"detector": self.detector} if self.detector != DEFAULT_DETECTOR else {}  # the default's key as before
        return self._generate_state_key(source=self.source, random_state=self.random_state, **other)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        find_source(trainer, ExplanationMonitor, self.source, "AnomalyMonitor")

    def on_explanations(self, trainer: pl.Trainer, pl_module: pl.LightningModule, check: ExplanationCheck) -> None:
        """Score ``check``'s scans, log, and hand the :class:`AnomalyCheck` to the anomaly consumers."""
        import pandas as pd

        from agg2exp_lightning.analysis.anomaly import class_anomaly_scores
        from agg2exp_lightning.analysis.correlation import anomaly_dice_correlation

        targets = check.target_names
        reference = check.reference_roi if check.reference_roi is not None and len(check.reference_roi) >= 2 else None
        result = class_anomaly_scores(check.roi, targets, reference, random_state=self.random_state, detector=self.detector)
        dice_by_scan = per_scan_dice(pl_module)
        metrics: dict[str, float] = {}
        correlation = None
        if all(sid in dice_by_scan for sid in check.subject_ids):
            dice = np.stack([np.asarray(dice_by_scan[sid], dtype=float)[check.target_ids] for sid in check.subject_ids])
            correlation = anomaly_dice_correlation(result.scores, dice, targets)
            for cls, row in correlation.iterrows():
                metrics[f"{self.prefix}/anomaly_dice_rho/{cls}"] = row["rho"]
        for i, cls in enumerate(targets):
            metrics[f"{self.prefix}/outliers/{cls}"] = float(result.outliers[:, i].sum())
            metrics[f"{self.prefix}/anomaly_score_mean/{cls}"] = float(np.nanmean(result.scores[:, i])) if np.isfinite(result.scores[:, i]).any() else float("nan")
        metrics[f"{self.prefix}/outliers_any"] = float(result.any_outlier.sum())
        # a skipped analysis is said once at INFO (then at DEBUG each check), never silently
        ref_evidence = check.reference_evidence if reference is not None else None
        scan = self.latest_scan = _scan_level(check.roi, targets, reference, self.random_state, self.evidence, check.evidence, ref_evidence,
                                              level=logging.DEBUG if self._skip_said else logging.INFO, detector=self.detector,
                                              score_detector=self.score_detector, score_tail=self.score_tail)
        self._skip_said = self._skip_said or scan is None
        if scan is not None:
            metrics[f"{self.prefix}/scan_flagged"] = float(scan.flagged.sum())
            metrics[f"{self.prefix}/scan_score_mean"] = float(np.nanmean(scan.score)) if np.isfinite(scan.score).any() else float("nan")
        log_scalars(trainer, metrics)
        frame = pd.DataFrame(result.scores, index=pd.Index(check.subject_ids, name="subject_id"), columns=[f"{c}_score" for c in targets])
        for i, cls in enumerate(targets):
            frame[f"{cls}_outlier"] = result.outliers[:, i]
        if scan is not None:
            frame["scan_score"], frame["scan_p"], frame["scan_flagged"] = scan.score, scan.p_value, scan.flagged
        log_table(trainer, f"{self.prefix}/anomaly_scores", frame)
        self.latest = AnomalyCheck(
            epoch=check.epoch, subject_ids=list(check.subject_ids), metadata=list(check.metadata), result=result,
            correlation=correlation, fitted_on="reference" if reference is not None else "validation", source=check.source,
        )
        self.history.append({"epoch": check.epoch, "outliers_any": int(result.any_outlier.sum()),
                             "scan_flagged": None if scan is None else int(scan.flagged.sum()),
                             "rho": None if correlation is None else {k: (None if v != v else float(v)) for k, v in correlation["rho"].items()}})
        deliver(trainer, pl_module, self.latest)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def _scan_level(roi: np.ndarray, targets: list[str], reference: np.ndarray | None, random_state: int,
                evidence: tuple[str, ...] = ("shares",), families: dict[str, np.ndarray] | None = None,
                reference_families: dict[str, np.ndarray] | None = None, *, level: int = logging.INFO,
                detector: str = DEFAULT_DETECTOR, score_detector: str = DEFAULT_SCORE_DETECTOR,
                score_tail: str = DEFAULT_SCORE_TAIL) -> Any:
    """The calibrated scan-level score (:func:`~agg2exp_lightning.analysis.anomaly.scan_anomaly_scores`)
    against the reference scans when there are enough, else the validation scans themselves; ``None``
    when neither has enough scans to cross-fit. The evidence families in ``evidence`` that the check
    holds for some scan enter as in the audit."""
    from agg2exp_lightning.analysis.anomaly import MIN_REFERENCE_SCANS, scan_anomaly_scores
    from agg2exp_lightning.analysis.evidence import forest_features

    basis = reference if reference is not None and len(reference) >= MIN_REFERENCE_SCANS else None
    if basis is None and len(roi) < MIN_REFERENCE_SCANS:
        log.log(level, "scan-level score skipped (agg2exp/scan_flagged not logged): %d validation and %d reference scans, "
                "need %d of either to cross-fit its forests; the per-class anomaly scores are logged as usual", len(roi),
                0 if reference is None else len(reference), MIN_REFERENCE_SCANS)
        return None
    chosen = {}
    for fam in evidence:
        aud = (families or {}).get(fam)
        ref = None if basis is None else (reference_families or {}).get(fam)
        if fam == "shares" or aud is None or (basis is not None and ref is None) or not np.isfinite(aud).all(axis=2).any():
            continue
        chosen[fam] = (forest_features(aud, fam), None if ref is None else forest_features(ref, fam))
    shares = "shares" in evidence or not chosen
    return scan_anomaly_scores(roi, targets, basis, random_state=random_state, families=chosen, shares=shares, detector=detector,
                               score_detector=score_detector, score_tail=score_tail)

"""Lightning callbacks that explain a segmentation model while it trains (``agg2exp_lightning.callbacks``)."""
from __future__ import annotations

from agg2exp_lightning.callbacks.anomaly_monitor import AnomalyMonitor
from agg2exp_lightning.callbacks.bias_monitor import BiasMonitor
from agg2exp_lightning.callbacks.explanation_monitor import ExplanationCheck, ExplanationMonitor

__all__ = ["AnomalyMonitor", "BiasMonitor", "ExplanationCheck", "ExplanationMonitor"]

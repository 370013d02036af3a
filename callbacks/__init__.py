"""Lightning callbacks that explain a segmentation model while it trains (``agg2exp_lightning.callbacks``).

What they read from the model and the data, and what they pass to each other, is written down in
:mod:`agg2exp_lightning.callbacks.contract`.
"""
from __future__ import annotations

from agg2exp_lightning.callbacks.anomaly_monitor import AnomalyMonitor
from agg2exp_lightning.callbacks.bias_monitor import BiasMonitor
from agg2exp_lightning.callbacks.contract import (
    AnomalyCheck,
    AnomalyConsumer,
    ExplanationCheck,
    ExplanationConsumer,
    MonitoredDataModule,
    MonitoredModule,
)
from agg2exp_lightning.callbacks.explanation_monitor import ExplanationMonitor

__all__ = [
    "AnomalyCheck",
    "AnomalyConsumer",
    "AnomalyMonitor",
    "BiasMonitor",
    "ExplanationCheck",
    "ExplanationConsumer",
    "ExplanationMonitor",
    "MonitoredDataModule",
    "MonitoredModule",
]

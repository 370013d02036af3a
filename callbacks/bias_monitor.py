"""BiasMonitor: subgroup tests of the anomalous validation scans against their metadata."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from agg2exp_lightning.callbacks._plumbing import log_scalars, log_table
from agg2exp_lightning.callbacks.anomaly_monitor import AnomalyMonitor
from agg2exp_lightning.callbacks.contract import AnomalyCheck, find_source, validation_dataset, volume

log = logging.getLogger(__name__)


class BiasMonitor(Callback):
    """After each anomaly check, test whether a metadata subgroup is over-represented among outliers.

    Uses the audit's tests (:func:`agg2exp_lightning.analysis.bias.bias_tests`: chi-square/Fisher for
    categorical columns, Mann-Whitney U for numeric ones, BH-adjusted). Logs the smallest p and q per
    column and the outlier counts, and a table of all tests.

    The outliers arrive as an :class:`~agg2exp_lightning.callbacks.contract.AnomalyCheck` (``on_anomalies``).

    Args:
        columns: metadata columns to test (default: every column but ids and the split).
        seed: seed of the permutation tests.
        source: the ``name`` of the :class:`ExplanationMonitor` whose anomalies to test (needed only when
            the Trainer holds several).
    """

    IGNORED = ("image_id", "split", "subject_id")

    def __init__(self, columns: Sequence[str] | None = None, seed: int = 0, source: str | None = None) -> None:
        super().__init__()
        self.columns = list(columns) if columns is not None else None
        self.seed = seed
        self.source = source
        self.prefix = "agg2exp" if source is None else f"agg2exp/{source}"
        self.history: list[dict[str, Any]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(source=self.source, columns=self.columns, seed=self.seed)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        found = [cb for cb in trainer.callbacks if isinstance(cb, AnomalyMonitor) and cb.source in (None, self.source)]
        if not found:
            find_source(trainer, AnomalyMonitor, None, "BiasMonitor")  # raises: names what to add
        if stage == "fit":
            self._check_columns(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_columns(trainer)

    def _check_columns(self, trainer: pl.Trainer) -> None:
        if self.columns:
            dataset = validation_dataset(trainer)
            if dataset is not None and len(dataset):
                available = set(volume(dataset[0])[2])
                missing = [c for c in self.columns if c not in available]
                if missing:
                    raise ValueError(
                        f"BiasMonitor: metadata columns {missing} are not in the validation scans' metadata; "
                        f"available: {sorted(available)}"
                    )

    def on_anomalies(self, trainer: pl.Trainer, pl_module: pl.LightningModule, check: AnomalyCheck) -> None:
        """Test the outliers of ``check`` against the scans' metadata and log the tests."""
        import pandas as pd

        from agg2exp_lightning.analysis.bias import bias_tests

        meta = pd.DataFrame(check.metadata, index=check.subject_ids)
        cols = self.columns or [c for c in meta.columns if c not in self.IGNORED]
        meta = meta[[c for c in cols if c in meta.columns]]
        result = check.result
        groups = {"any": result.any_outlier}
        groups.update({cls: result.outliers[:, i] for i, cls in enumerate(result.classes)})
        tests = bias_tests(meta, groups, seed=self.seed).tests
        metrics: dict[str, float] = {}
        for col, rows in tests.groupby("column"):
            metrics[f"{self.prefix}/bias_min_p/{col}"] = float(rows["p"].min())
            metrics[f"{self.prefix}/bias_min_q/{col}"] = float(rows["q"].min())
        log_scalars(trainer, metrics)
        if len(tests):
            log_table(trainer, f"{self.prefix}/bias_tests", tests.set_index("group"))
        significant = tests[tests["q"] < 0.05] if len(tests) else tests
        self.history.append({"epoch": check.epoch, "n_tests": int(len(tests)), "n_significant": int(len(significant))})
        for _, row in significant.iterrows():
            log.info("bias monitor: %s outliers differ in %s (q=%.3g): %s", row["group"], row["column"], row["q"], row["detail"])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

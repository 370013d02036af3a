"""The method-comparison table: mean +- sd per method as CSV and Markdown, and a figure."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agg2exp_lightning.utils.files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["markdown_table", "plot_comparison", "summarise", "write_report"]

#: column -> (heading, better direction); efficiency columns are summarised over scans, the others over
#: scans and targets.
HEADINGS: dict[str, tuple[str, str]] = {
    "faithfulness": ("Faithfulness", "↑"),
    "sensitivity_avg": ("Avg. sensitivity", "↓"),
    "sensitivity_max": ("Max. sensitivity", "↓"),
    "complexity": ("Complexity", "↓"),
    "seconds_one_class": ("Time, one class (s)", "↓"),
    "seconds_all_classes": ("Time, all classes (s)", "↓"),
}
PER_SCAN = ("seconds_one_class", "seconds_all_classes")


def summarise(table: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, sample sd and count (NaN left out) of every metric per method.

    Args:
        table: the long table of :func:`~agg2exp_lightning.evaluation.compare.compare_methods`.
        methods: row order (default: order of appearance).

    Returns:
        One row per method, columns ``<metric>_mean``, ``<metric>_sd``, ``<metric>_n``.
    """
    missing = {"subject_id", "method", "target", *HEADINGS} - set(table.columns)
    if missing:
        raise ValueError(f"Expected `table` with columns {sorted(missing)}")
    methods = list(methods) if methods is not None else list(dict.fromkeys(table["method"]))
    out = {}
    for metric in HEADINGS:
        frame = table.drop_duplicates(["subject_id", "method"]) if metric in PER_SCAN else table
        g = frame.groupby("method")[metric]
        out[f"{metric}_mean"], out[f"{metric}_sd"], out[f"{metric}_n"] = g.mean(), g.std(ddof=1), g.count()
    summary = pd.DataFrame(out).reindex(methods)
    summary.index.name = "method"
    return summary


def _cell(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    digits = 2 if abs(mean) >= 10 else 3
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if np.isfinite(sd) else f"{mean:.{digits}f}"


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table of ``mean ± sd`` cells (arrows: the better direction)."""
    head = "| Method | " + " | ".join(f"{h} {d}" for h, d in HEADINGS.values()) + " |"
    rule = "|---|" + "---:|" * len(HEADINGS)
    rows = [
        f"| {method} | " + " | ".join(_cell(row[f"{m}_mean"], row[f"{m}_sd"]) for m in HEADINGS) + " |"
        for method, row in summary.iterrows()
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def plot_comparison(table: pd.DataFrame, path: str | Path, methods: Sequence[str] | None = None) -> Path:
    """One panel per metric: each method's values over scans (and targets) as box plots with points."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    methods = list(methods) if methods is not None else list(dict.fromkeys(table["method"]))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    rng = np.random.default_rng(0)
    for ax, (metric, (heading, better)) in zip(axes.flat, HEADINGS.items()):
        frame = table.drop_duplicates(["subject_id", "method"]) if metric in PER_SCAN else table
        data = [frame.loc[frame["method"] == m, metric].dropna().to_numpy(float) for m in methods]
        ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=8, alpha=0.5, color="tab:blue")
        ax.set_xticks(range(1, len(methods) + 1), [m.replace("_", "\n") for m in methods], fontsize=7)
        ax.set_title(f"{heading} {better}")
        if metric in PER_SCAN and all(d.size and (d > 0).all() for d in data):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    fig.suptitle(f"Attribution methods on {table['subject_id'].nunique()} scans, {table['target'].nunique()} targets")
    try:
        return atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write_report(table: pd.DataFrame, out_dir: str | Path, methods: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``results.csv`` (long table), ``summary.csv``, ``summary.md`` and ``summary.png`` to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(table, methods)
    paths = {"results": out / "results.csv", "summary_csv": out / "summary.csv", "summary_md": out / "summary.md",
             "figure": out / "summary.png"}
    atomic_write_text(paths["results"], table.to_csv(index=False))
    atomic_write_text(paths["summary_csv"], summary.to_csv())
    n_scans, n_targets = table["subject_id"].nunique(), table["target"].nunique()
    note = (f"\nMean ± sd over {n_scans} scans × {n_targets} targets (times: over scans; one class = the first "
            f"target alone, all classes = the {n_targets} targets in one call). "
            f"Targets: {', '.join(dict.fromkeys(table['target']))}.\n")
    atomic_write_text(paths["summary_md"], markdown_table(summary) + note)
    plot_comparison(table, paths["figure"], methods)
    log.info("comparison table written to %s", paths["summary_md"])
    return paths

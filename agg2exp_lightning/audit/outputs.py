"""Write a cohort analysis into an audit folder: tables, summary, figures and the HTML report.

Layout of ``out_dir`` after :func:`write_audit_outputs`::

    audit.json          which audit this folder holds (fingerprint + configuration)
    summary.json        schema in agg2exp_lightning.analysis.cohort
    per_scan.csv        published column format + {a}_anomaly_score, {a}_outlier, any_class_outlier
    figures/*.png       importance_heatmap, dependency_graph, share_distributions, anomaly_vs_dice,
                        cases/*.png (checkpoint mode)
    report.html         one self-contained page (figures embedded)

Checkpoint audits also keep their per-scan work there (see
:mod:`agg2exp_lightning.audit.scan_records`): ``scans/<id>.json`` (+ ``.slices.npz``,
``.failed.json``), ``reference_scans/`` likewise, and ``failed_scans.json``
(``{"audited:<id>" | "reference:<id>": error}``).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agg2exp_lightning import __version__
from agg2exp_lightning.analysis.cohort import CohortAnalysis
from agg2exp_lightning.analysis.figures import anomaly_vs_dice, dependency_graph, figure_png, importance_heatmap, share_distributions
from agg2exp_lightning.analysis.importance import own_region_share
from agg2exp_lightning.analysis.report import render_report
from agg2exp_lightning.utils.files import atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditOutputs:
    """Paths written by :func:`write_audit_outputs` and the summary they hold."""

    out_dir: Path
    summary: dict[str, Any]
    summary_json: Path
    per_scan_csv: Path
    report_html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    #: The cohort analysis the files were written from (tables, anomaly scores, statistics).
    analysis: CohortAnalysis | None = None


def cohort_figures(analysis: CohortAnalysis) -> dict[str, bytes]:
    """PNG bytes of the cohort figures, keyed as in :data:`~agg2exp_lightning.analysis.report.FIGURE_CAPTIONS`."""
    t = analysis.table
    figs = {
        "importance_heatmap": importance_heatmap(analysis.importance, t.classes, t.regions),
        "dependency_graph": dependency_graph(analysis.dependencies, t.regions),
    }
    own_classes = [a for a in t.classes if a in t.regions]
    if own_classes:
        idx = [t.classes.index(a) for a in own_classes]
        own = own_region_share(t.mass[:, idx, :], own_classes, t.regions)
        bg = t.mass[:, idx, t.regions.index("background")] if "background" in t.regions else None
        figs["share_distributions"] = share_distributions(own, bg, own_classes)
    else:
        log.info("share distributions skipped: no explained class is also a region (no own-region share)")
    if t.dice is not None:
        figs["anomaly_vs_dice"] = anomaly_vs_dice(analysis.anomaly.scores, t.dice, analysis.anomaly.outliers, t.classes, analysis.correlation)
    else:
        log.info("forest score vs Dice skipped (figure and Spearman tests): the table has no Dice columns")
    figs.update(paper_figures(analysis))
    return {k: figure_png(f) for k, f in figs.items()}


def paper_figures(analysis: CohortAnalysis) -> dict[str, Any]:
    """The figures of the paper's analyses (graph by the protocol's rule, per-class boxplots, clustering,
    mean anomaly score vs mean Dice), keyed as in :data:`~agg2exp_lightning.analysis.report.FIGURE_CAPTIONS`."""
    from agg2exp_lightning.analysis import paper_figures as pf

    t = analysis.table
    figs: dict[str, Any] = {
        "published_dependency_graph": pf.published_dependency_graph(analysis.graph, t.classes),
        "class_boxplots": pf.class_share_boxplots(t.mass, t.classes, t.regions),
    }
    if analysis.clustering is not None:
        figs["class_clustering"] = pf.clustering_dendrogram(analysis.clustering)
    else:
        log.info("class clustering skipped: fewer than 3 classes and regions to cluster (background left out)")
    mean = analysis.mean_correlation
    if mean.get("n", 0) >= 3:
        figs["mean_anomaly_vs_mean_dice"] = pf.mean_anomaly_vs_mean_dice(mean["mean_score"], mean["mean_dice"], mean["rho"], mean["p"])
    else:
        log.info("mean forest score vs mean Dice skipped: %d scans with both, need 3", mean.get("n", 0))
    return figs


def report_header(inputs: Mapping[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """The report's header rows: the toolkit and its version, when the page was written, then ``inputs``."""
    when = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    return {"toolkit": f"agg2exp-lightning {__version__}", "written": when, **inputs}


def sha256_note(path: str | Path | None, what: str = "none") -> str:
    """``"PATH (SHA-256 HEX)"`` for a file, ``what`` when there is none."""
    if path is None:
        return what
    p = Path(path)
    return f"{p} (SHA-256 {file_sha256(p)})" if p.is_file() else str(p)


def write_audit_outputs(
    analysis: CohortAnalysis,
    out_dir: str | Path,
    *,
    inputs: Mapping[str, Any],
    case_figures: Sequence[tuple[str, bytes]] = (),
    links: Mapping[str, str] | None = None,
    model_audit: bool = True,
) -> AuditOutputs:
    """Write ``summary.json``, ``per_scan.csv``, the figures and ``report.html``, each atomically.

    Args:
        analysis: the cohort analysis.
        out_dir: the audit folder (claimed with
            :func:`~agg2exp_lightning.audit.output_folder.open_output_folder` beforehand).
        inputs: what was audited, shown at the top of the report.
        case_figures: ``(caption, png)`` slices of anomalous cases (checkpoint mode).
        links: label -> address relative to ``out_dir``, linked from the report (e.g. the three-view figures).
        model_audit: the audit made the explanations; ``False`` (a table audit) hides the explanation-only
            protocol settings on the page.

    Returns:
        The written paths and the summary.
    """
    out = Path(out_dir)
    summary = analysis.summary()
    summary_json = atomic_write_json(out / "summary.json", summary)
    frame = analysis.per_scan_frame()
    per_scan = atomic_write_text(out / "per_scan.csv", frame.to_csv(index=False, float_format="%.10g"))
    pngs = cohort_figures(analysis)
    paths = {k: atomic_write_bytes(out / "figures" / f"{k}.png", v) for k, v in pngs.items()}
    for stale in (out / "figures" / "cases").glob("case_*.png"):  # from an earlier analysis of this audit
        stale.unlink()
    for k, (caption, png) in enumerate(case_figures):
        paths[f"case_{k:02d}"] = atomic_write_bytes(out / "figures" / "cases" / f"case_{k:02d}.png", png)
    page = render_report(summary, pngs, inputs=report_header(inputs), case_figures=case_figures, links=links, model_audit=model_audit)
    report = atomic_write_text(out / "report.html", page)
    log.info("audit written to %s (report: %s)", out, report)
    n_sig = sum(1 for v in summary["per_class"].values() if v["q"] is not None and v["q"] < 0.05)
    log.info("%d scans, %d outlier scans, %d classes with anomaly~Dice q<0.05",
             summary["n_scans"], summary["anomaly"]["n_outlier_scans"], n_sig)
    scan = summary.get("scan_anomaly", {})
    if "n_flagged" in scan:
        held = scan.get("any_class_outlier_rate_held_out")
        log.info("scan-level score: %d of %d scans flagged at contamination %g (expected false-positive rate on clean scans %.1f%%, "
                 "%d reference scans); the per-class rule 'outlier for any class' flags %d%s",
                 scan["n_flagged"], summary["n_scans"], scan["contamination"], 100 * scan["expected_false_positive_rate"],
                 scan["n_reference"], summary["anomaly"]["n_outlier_scans"],
                 "" if held is None else f" and {100 * held:.0f}% of held-out reference scans")
    return AuditOutputs(out_dir=out, summary=summary, summary_json=summary_json, per_scan_csv=per_scan, report_html=report, figures=paths,
                        analysis=analysis)

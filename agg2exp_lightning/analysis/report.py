"""One self-contained static HTML page for an audit: figures embedded as base64 PNG.

The page is rendered from the audit's ``summary.json`` dict (schema in
:mod:`agg2exp_lightning.analysis.cohort`), so the report and the JSON never disagree. Every string
that comes from data (ids, metadata values, paths, class names) goes through :func:`html.escape`;
the page has no scripts and loads nothing.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Figure keys the report places, with their captions, in reading order.
FIGURE_CAPTIONS: dict[str, str] = {
    "importance_heatmap": "Global RoI importance: for each explained class (row), the mean share of its attribution mass in each predicted region (column).",
    "dependency_graph": "The strongest region \u2192 class dependencies outside the class's own region and the background.",
    "share_distributions": "Distribution over scans of the share of each class's attribution in its own region and in the background.",
    "anomaly_vs_dice": "Anomaly score (\u2212decision_function of the per-class Isolation Forest; higher = more anomalous) against Dice; outliers marked \u00d7.",
    "published_dependency_graph": "Dependency graph by the protocol's rule (per explained class its strongest regions, background left out; self loops: the class's own region; width 2(w+0.02)/(max w+0.02)).",
    "class_boxplots": "Per explained class, the share of its attribution in every region over scans, regions ordered by median (background left out).",
    "class_clustering": "Classes clustered by their RoI profiles: average linkage on max \u2212 sqrt(mean share).",
    "mean_anomaly_vs_mean_dice": "Per scan, the mean anomaly score over classes against the mean Dice over classes (Spearman \u03c1 in the title).",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:1em 0;font-size:.85em} th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums} tr.sig td{background:#fff3e0}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #ddd} figcaption{font-size:.85em;color:#555}
.note{color:#555;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return _e(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[bool] | None = None, highlight: Sequence[bool] | None = None) -> str:
    numeric = numeric or [False] * len(header)
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        cls = ' class="sig"' if highlight is not None and highlight[k] else ""
        cells = (f'<td class="num">{_fmt(v)}</td>' if num else f"<td>{_e(v) if not isinstance(v, float) else _fmt(v)}</td>" for v, num in zip(row, numeric))
        out += [f"<tr{cls}>", *cells, "</tr>"]
    out.append("</tbody></table>")
    return "".join(out)


def _figure(png: bytes, caption: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"><figcaption>{_e(caption)}</figcaption></figure>'


def render_report(
    summary: Mapping[str, Any],
    figures: Mapping[str, bytes],
    *,
    inputs: Mapping[str, Any],
    case_figures: Sequence[tuple[str, bytes]] = (),
    links: Mapping[str, str] | None = None,
    title: str = "Agg2Exp model audit",
    alpha: float = 0.05,
) -> str:
    """Render the audit page.

    Args:
        summary: the ``summary.json`` dict.
        figures: PNG bytes by key (keys of :data:`FIGURE_CAPTIONS`; missing ones are left out).
        inputs: what was audited (source, options), shown as a key/value table.
        case_figures: ``(caption, png)`` slices of the most/least anomalous scans, if available.
        links: label -> address relative to the report (e.g. the three-view figures' ``index.html``),
            listed as links under the inputs table.
        title: page title.
        alpha: q-value threshold for highlighting rows.

    Returns:
        The HTML document as a string.
    """
    per_class: Mapping[str, Mapping[str, Any]] = summary["per_class"]
    anomaly = summary["anomaly"]
    sig = [c for c, v in per_class.items() if v["q"] is not None and v["q"] < alpha]
    bias = list(summary.get("bias_tests", []))
    sig_bias = [b for b in bias if b["q"] is not None and b["q"] < alpha]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>"]

    parts.append("<h2 id=\"inputs\">What was audited</h2>")
    parts.append(_table(["item", "value"], [(k, v) for k, v in inputs.items()]))
    if links:
        parts.append("<ul>" + "".join(f"<li><a href=\"{_e(href)}\">{_e(label)}</a></li>" for label, href in links.items()) + "</ul>")

    parts.append("<h2 id=\"findings\">Findings</h2><ul>")
    parts.append(f"<li>{summary['n_scans']} scans, {len(per_class)} explained classes; Isolation Forests fitted on the {_e(anomaly['fitted_on'])} (random_state={_e(anomaly['random_state'])}).</li>")
    parts.append(f"<li>{anomaly['n_outlier_scans']} of {summary['n_scans']} scans are outliers for at least one class.</li>")
    parts.append(f"<li>Anomaly score correlates with Dice (BH q &lt; {alpha}) for: {_e(', '.join(sig) if sig else 'no class')}.</li>")
    deps = summary.get("strongest_dependencies", [])
    if deps:
        d = deps[0]
        parts.append(f"<li>Strongest dependency: {_e(d['class'])} relies on region {_e(d['region'])} ({100 * d['share']:.1f}% of its attribution mass on average).</li>")
    parts.append(f"<li>Bias tests: {len(bias)} run, {len(sig_bias)} with q &lt; {alpha}.</li></ul>")
    parts.append(_worklist_section(summary, alpha))

    parts.append("<h2 id=\"importance\">Global RoI importance</h2>")
    for key in ("importance_heatmap", "dependency_graph"):
        if key in figures:
            parts.append(_figure(figures[key], FIGURE_CAPTIONS[key], key))
    if deps:
        parts.append(_table(["region", "explained class", "mean share"], [(d["region"], d["class"], d["share"]) for d in deps], numeric=[False, False, True]))

    parts.append(_paper_section(summary, figures))

    parts.append("<h2 id=\"distributions\">Per-class distributions and context reliance</h2>")
    if "share_distributions" in figures:
        parts.append(_figure(figures["share_distributions"], FIGURE_CAPTIONS["share_distributions"], "share_distributions"))
    parts.append(_table(["class", "own share", "context reliance (1 \u2212 own)", "background share"],
                        [(c, v["own_share"], v["context_reliance"], v["background_share"]) for c, v in per_class.items()],
                        numeric=[False, True, True, True]))

    parts.append("<h2 id=\"anomalies\">Anomalous explanations and segmentation quality</h2>")
    parts.append(f"<p class=\"note\">Anomaly score = {_e(anomaly['score'])}; outlier = {_e(anomaly['outlier'])}. "
                 "\u03c1: Spearman correlation of anomaly score and Dice; q: Benjamini-Hochberg across classes.</p>")
    if "anomaly_vs_dice" in figures:
        parts.append(_figure(figures["anomaly_vs_dice"], FIGURE_CAPTIONS["anomaly_vs_dice"], "anomaly_vs_dice"))
    parts.append(_table(["class", "\u03c1", "p", "q", "n", "outliers"],
                        [(c, v["rho"], v["p"], v["q"], v["n"], v["n_outliers"]) for c, v in per_class.items()],
                        numeric=[False, True, True, True, True, True], highlight=[c in sig for c in per_class]))

    parts.append("<h2 id=\"cases\">Most and least anomalous scans</h2>")
    rows = []
    for c, ends in summary.get("extreme_cases", {}).items():
        rows.append((c, ", ".join(f"{x['id']} ({x['score']:.3f})" for x in ends["most_anomalous"]),
                     ", ".join(f"{x['id']} ({x['score']:.3f})" for x in ends["least_anomalous"])))
    parts.append(_table(["class", "most anomalous (score)", "least anomalous (score)"], rows))
    for caption, png in case_figures:
        parts.append(_figure(png, caption, caption))

    parts.append("<h2 id=\"bias\">Bias: are the outliers a subgroup?</h2>")
    if bias:
        order = sorted(bias, key=lambda b: (b["q"] is None, b["q"] if b["q"] is not None else 1.0))
        parts.append(f"<p class=\"note\">Outliers vs inliers per metadata column; group {_e('any_class')} = outlier for any class. q: Benjamini-Hochberg over all {len(bias)} tests.</p>")
        parts.append(_table(["group", "column", "test", "outliers", "inliers", "p", "q", "effect", "size", "detail"],
                            [(b["group"], b["column"], b["test"], b["n_outliers"], b["n_inliers"], b["p"], b["q"], b["effect"], b["effect_size"], b["detail"]) for b in order],
                            numeric=[False, False, False, True, True, True, True, False, True, False],
                            highlight=[b["q"] is not None and b["q"] < alpha for b in order]))
    else:
        parts.append("<p>No metadata column could be tested (the table has no metadata, or no outliers).</p>")
    parts.append(_score_tests_section(summary, alpha))
    skipped = summary.get("bias_skipped", [])
    if skipped:
        parts.append("<p class=\"note\">Not tested:</p>")
        parts.append(_table(["group", "column", "reason"], [(s["group"], s["column"], s["reason"]) for s in skipped]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _worklist_section(summary: Mapping[str, Any], alpha: float) -> str:
    """Findings on the calibrated scan-level score and the worklist (scans to look at first, with why)."""
    scan = summary.get("scan_anomaly")
    if not scan:
        return ""
    out = ["<h2 id=\"worklist\">Scans to look at first</h2>"]
    for note in scan.get("notes", []):
        out.append(f"<p class=\"note\">{_e(note)}</p>")
    if "n_flagged" not in scan:
        return "\n".join(out)
    held = scan.get("any_class_outlier_rate_held_out")
    out.append(
        f"<p>{scan['n_flagged']} of {summary['n_scans']} scans flagged: their scan-level score is higher than all but "
        f"{100 * float(scan['contamination']):g} % of the {scan['n_reference']} {_e(scan['reference'])} "
        f"(contamination {scan['contamination']:g}; expected false-positive rate on clean scans "
        f"{100 * scan['expected_false_positive_rate']:.1f} %). For comparison, the per-class rule \u201coutlier for any class\u201d "
        f"flags {summary['anomaly']['n_outlier_scans']} scans here"
        + (f" and {100 * held:.0f} % of held-out reference scans." if held is not None else ".") + "</p>")
    out.append(f"<p class=\"note\">Score: {_e(scan['method'])}.</p>")
    rows = [(r["rank"], r["id"], r["score"], r["p_value"], "yes" if r["flagged"] else "no", r.get("why", "")) for r in summary.get("worklist", [])]
    if rows:
        out.append(_table(["rank", "scan", "score", "calibrated p", "flagged", "why: classes (per-class p) and the regions whose share moved most against the reference"],
                          rows, numeric=[True, False, True, True, False, False], highlight=[r[4] == "yes" for r in rows]))
    return "\n".join(out)


def _score_tests_section(summary: Mapping[str, Any], alpha: float) -> str:
    """Rank tests of the scan-level score across the groups of every metadata column."""
    tests = list(summary.get("score_tests", []))
    skipped = summary.get("score_tests_skipped", [])
    if not tests and not skipped:
        return ""
    out = ["<h3 id=\"score-bias\">Does the scan-level score differ between groups?</h3>",
           "<p class=\"note\">Kruskal-Wallis (Mann-Whitney for two groups; Spearman for numeric columns, which are also "
           "tested in quantile bins) of the continuous scan-level score; effect sizes with 95 % bootstrap (Spearman: Fisher z) "
           "intervals; q: Benjamini-Hochberg over these tests (the primary family; the outlier-proportion tests above form their own).</p>"]
    if tests:
        order = sorted(tests, key=lambda b: (b["q"] is None, b["q"] if b["q"] is not None else 1.0))
        out.append(_table(["column", "test", "n", "p", "q", "effect", "size", "95 % CI", "detail"],
                          [(b["column"], b["test"], b["n"], b["p"], b["q"], b["effect"], b["effect_size"],
                            "\u2013" if b["ci_low"] is None else f"{b['ci_low']:.3f} to {b['ci_high']:.3f}", b["detail"]) for b in order],
                          numeric=[False, False, True, True, True, False, True, False, False],
                          highlight=[b["q"] is not None and b["q"] < alpha for b in order]))
    if skipped:
        out.append(_table(["column", "not tested because"], [(s["column"], s["reason"]) for s in skipped]))
    return "\n".join(out)


def _paper_section(summary: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The protocol and the paper's analyses: dependency graph, per-class boxplots, clustering, scan-level Spearman."""
    protocol = summary.get("protocol")
    if not protocol:
        return ""
    out = ["<h2 id=\"paper-analyses\">The paper's analyses</h2>",
           f"<p class=\"note\">Protocol: {_e(protocol['label'])}. Settings: "
           + _e(", ".join(f"{k}={v}" for k, v in protocol["settings"].items())) + ".</p>"]
    merged = summary.get("merged_regions") or {}
    if merged:
        out.append(_table(["merged region", "members"], [(k, ", ".join(v)) for k, v in merged.items()]))
    graph = summary.get("dependency_graph") or {}
    rule = graph.get("rule")
    if rule:
        limit = f"cumulative share \u2264 {graph['cumulative_share']:g}" if rule == "cumulative" else f"top {graph['top_k']}"
        out.append(f"<p>Dependency graph rule: per explained class, the strongest regions ({_e(limit)}); "
                   f"{len(graph.get('edges', []))} edges.</p>")
    for key in ("published_dependency_graph", "class_boxplots", "class_clustering"):
        if key in figures:
            out.append(_figure(figures[key], FIGURE_CAPTIONS[key], key))
    clustering = summary.get("clustering")
    if clustering:
        out.append(f"<p class=\"note\">Clustering ({_e(clustering['rule'])} rule) leaf order: {_e(', '.join(clustering['order']))}; "
                   f"cophenetic correlation {_fmt(clustering['cophenetic_correlation'])}.</p>")
    mean = summary.get("mean_anomaly_vs_mean_dice") or {}
    if mean.get("n"):
        out.append(_table(["scan-level test", "\u03c1", "p", "n"],
                          [("Spearman: mean anomaly score vs mean Dice", mean["rho"], mean["p"], mean["n"])],
                          numeric=[False, True, True, True]))
    if "mean_anomaly_vs_mean_dice" in figures:
        out.append(_figure(figures["mean_anomaly_vs_mean_dice"], FIGURE_CAPTIONS["mean_anomaly_vs_mean_dice"], "mean_anomaly_vs_mean_dice"))
    return "\n".join(out)

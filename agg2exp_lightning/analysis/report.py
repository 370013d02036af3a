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

from agg2exp_lightning.protocols import ANALYSIS_SETTINGS

#: Figure keys the report places, with their captions in plain words, in reading order.
FIGURE_CAPTIONS: dict[str, str] = {
    "importance_heatmap": "Global RoI importance: for each explained class (row), the mean share of its attribution mass in each predicted region (column), in percent.",
    "dependency_graph": "The strongest region \u2192 class dependencies outside the class's own region and the background; the arrow's label is the mean share in percent.",
    "share_distributions": "Distribution over scans of the share of each class's attribution in its own region and in the background.",
    "anomaly_vs_dice": "Per explained class, each scan's forest score (higher = more unusual for that class; above 0, marked \u00d7, the class's forest calls the scan an outlier) against its Dice; Spearman \u03c1 in each title.",
    "published_dependency_graph": "Dependency graph by the protocol's rule (per explained class its strongest regions, background left out; a loop: the class's own region; line width grows with the mean share; above 30 edges drawn as a matrix, disc area growing with the mean share).",
    "class_boxplots": "Per explained class, the share of its attribution in every region over scans, regions ordered by median (background left out); every panel on one scale.",
    "class_clustering": "Classes clustered by their RoI profiles: average linkage on max \u2212 sqrt(mean share).",
    "mean_anomaly_vs_mean_dice": "Per scan, the mean forest score over classes against the mean Dice over classes (Spearman \u03c1 in the title).",
}

#: The report's words for each quantity, with the column or key that holds it (the glossary section).
GLOSSARY: tuple[tuple[str, str, str], ...] = (
    ("scan-level score", "scan_anomaly_score (per_scan.csv), worklist[].score (summary.json)",
     "One number per scan, higher = more unusual: per evidence family and class, a detector (by default the robust "
     "distance: the mean squared robust z-score of the features against the reference scans) scores the scan, the score "
     "is turned into a per-class p against the reference scans, and Fisher's combination of those p-values is written as "
     "\u2212log10 of its tail (about 0 to 6). It orders the worklist."),
    ("calibrated p", "scan_anomaly_p", "The share of reference scans whose scan-level score is at least as high (small = unusual)."),
    ("flagged", "scan_flagged", "Calibrated p at most the contamination: a clean scan like the reference scans is flagged with "
     "probability at most the contamination (the expected false-positive rate)."),
    ("contamination", "--contamination", "The share of clean scans the flag may raise (default 0.05)."),
    ("per-class p", "{class}_anomaly_p", "For one class, the share of reference scans whose score (the scan-level score's "
     "detector, on the class's shares) is at least as high (a class the scan lacks counts as most unusual)."),
    ("forest score", "{class}_anomaly_score", "The per-class Isolation Forest's score of a scan's shares (scikit-learn's "
     "\u2212decision_function, the paper's score): higher = more unusual for that class, about \u22120.2 to 0.2; "
     "not comparable between classes."),
    ("outlier for a class", "{class}_outlier", "The class's forest score is above 0 (scikit-learn's predict = \u22121)."),
    ("outlier for any class", "any_class_outlier", "Outlier for at least one class (the paper's rule). With many classes it marks "
     "most clean scans too: its false-positive rate on held-out reference scans is printed beside it."),
    ("share", "{class}_explanation_in_{region}_mass", "The fraction of a class's attribution mass that lies in a region; "
     "a class's shares sum to 1. Differences of shares are told in percentage points."),
    ("own share / context reliance", "own_share, context_reliance",
     "The share in the class's own region, and 1 minus it."),
    ("reference scans", "--reference-table, --reference-split",
     "The scans the detectors are fitted on and the scores are calibrated against; without them, the audited scans themselves."),
    ("reference median", "", "The median of a share over the reference scans: what a worklist reason compares a scan's share with."),
    ("\u03c1, p, q", "rho, p, q", "Spearman's rank correlation, its p-value, and the Benjamini-Hochberg q-value over the tests of one family."),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:1em 0;font-size:.85em} th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f0f0} td.num{text-align:right;font-variant-numeric:tabular-nums} tr.sig td{background:#fff3e0}
figure{margin:1.2em 0} figure img{max-width:100%;border:1px solid #ddd} figcaption{font-size:.85em;color:#555}
.note{color:#555;font-size:.9em} nav.toc{background:#f7f7f7;border:1px solid #ddd;padding:.4em 1em;margin:1em 0}
nav.toc ol{margin:.3em 0;columns:2} td{overflow-wrap:break-word} table.about td{overflow-wrap:anywhere} table.about td:first-child{white-space:nowrap;font-weight:600}
td.why{min-width:32em}
"""



def _detector(summary: Mapping[str, Any]) -> str:
    """The per-class detector in words, singular (``"Isolation Forest"``; summaries before the detector seam have none)."""
    return str(summary.get("anomaly", {}).get("detector_label", "Isolation Forests")).removesuffix("s")

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


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
           highlight: Sequence[bool] | None = None, css: str | None = None, markup: int | None = None) -> str:
    """An HTML table; every value escaped, except column ``markup``, which holds HTML built from escaped parts."""
    numeric = numeric or [False] * len(header)
    out = [f"<table{f' class={chr(34)}{css}{chr(34)}' if css else ''}><thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for k, row in enumerate(rows):
        cls = ' class="sig"' if highlight is not None and highlight[k] else ""
        cells = (f'<td class="why">{v}</td>' if j == markup else f'<td class="num">{_fmt(v)}</td>' if num
                 else f"<td>{_e(v) if not isinstance(v, float) else _fmt(v)}</td>" for j, (v, num) in enumerate(zip(row, numeric)))
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
    model_audit: bool = True,
) -> str:
    """Render the audit page.

    Args:
        summary: the ``summary.json`` dict.
        figures: PNG bytes by key (keys of :data:`FIGURE_CAPTIONS`; missing ones are left out).
        inputs: what was audited and where it came from (toolkit version, date, inputs with their SHA-256,
            model source, protocol, reference), shown as the page's header table.
        case_figures: ``(caption, png)`` slices of the most/least anomalous scans, if available.
        links: label -> address relative to the report (e.g. the three-view figures' ``index.html``),
            listed as links under the inputs table.
        title: page title.
        alpha: q-value threshold for highlighting rows.
        model_audit: the audit made the explanations (a model audit); ``False`` for a table audit, whose
            page then lists only the protocol settings that shape the analysis.

    Returns:
        The HTML document as a string.
    """
    per_class: Mapping[str, Mapping[str, Any]] = summary["per_class"]
    sig = [c for c, v in per_class.items() if v["q"] is not None and v["q"] < alpha]
    sections: list[tuple[str, str, str]] = []  # (id, heading, body)

    about = _table(["item", "value"], [(k, v) for k, v in inputs.items()], css="about")
    if links:
        about += "<ul>" + "".join(f"<li><a href=\"{_e(href)}\">{_e(label)}</a></li>" for label, href in links.items()) + "</ul>"
    sections.append(("inputs", "What was audited", about))
    sections.append(("findings", "Findings", _findings(summary, sig, alpha)))
    worklist = _worklist_section(summary)
    if worklist:
        sections.append(("worklist", "Scans to look at first", worklist))

    body = [_figure(figures[k], FIGURE_CAPTIONS[k], k) for k in ("importance_heatmap", "dependency_graph") if k in figures]
    deps = summary.get("strongest_dependencies", [])
    if deps:
        body.append(_table(["region", "explained class", "mean share (%)"],  # percent, as the figures above
                           [(d["region"], d["class"], f"{100 * d['share']:.1f}") for d in deps], numeric=[False, False, True]))
    sections.append(("importance", "Global RoI importance", "\n".join(body)))

    paper = _paper_section(summary, figures, model_audit=model_audit)
    if paper:
        sections.append(("paper-analyses", "The paper's analyses", paper))

    body = [_figure(figures["share_distributions"], FIGURE_CAPTIONS["share_distributions"], "share_distributions")] if "share_distributions" in figures else []
    body.append(_table(["class", "own share", "context reliance (1 \u2212 own)", "background share"],
                       [(c, v["own_share"], v["context_reliance"], v["background_share"]) for c, v in per_class.items()],
                       numeric=[False, True, True, True]))
    sections.append(("distributions", "Per-class distributions and context reliance", "\n".join(body)))

    body = [f"<p class=\"note\">Each class has its own {_e(_detector(summary))}; a scan's <b>forest score</b> for the class is higher the more "
            "unusual its shares are for that class, and above 0 the forest calls the scan an outlier for the class. "
            "\u03c1: Spearman correlation of forest score and Dice over scans; q: Benjamini-Hochberg across classes. "
            "A negative \u03c1 means scans with more unusual explanations tend to be segmented worse.</p>"]
    if "anomaly_vs_dice" in figures:
        body.append(_figure(figures["anomaly_vs_dice"], FIGURE_CAPTIONS["anomaly_vs_dice"], "anomaly_vs_dice"))
    body.append(_table(["class", "\u03c1", "p", "q", "n", "outliers for the class"],
                       [(c, v["rho"], v["p"], v["q"], v["n"], v["n_outliers"]) for c, v in per_class.items()],
                       numeric=[False, True, True, True, True, True], highlight=[c in sig for c in per_class]))
    sections.append(("anomalies", "Per-class forest scores and segmentation quality", "\n".join(body)))

    rows = []
    for c, ends in summary.get("extreme_cases", {}).items():
        rows.append((c, ", ".join(f"{x['id']} ({x['score']:.3f})" for x in ends["most_anomalous"]),
                     ", ".join(f"{x['id']} ({x['score']:.3f})" for x in ends["least_anomalous"])))
    body = ["<p class=\"note\">Per class, the scans with the highest and the lowest forest score (in brackets).</p>",
            _table(["class", "most unusual for the class (forest score)", "least unusual (forest score)"], rows)]
    body += [_figure(png, caption, caption) for caption, png in case_figures]
    sections.append(("cases", "Most and least unusual scans per class", "\n".join(body)))

    sections.append(("bias", "Bias: are the outliers a subgroup?", _bias_section(summary, alpha)))
    sections.append(("glossary", "Glossary", _table(["word on this page", "column or key", "what it means"], GLOSSARY)))

    toc = "<nav class=\"toc\" id=\"contents\"><b>Contents</b><ol>" + "".join(
        f"<li><a href=\"#{sid}\">{_e(head)}</a></li>" for sid, head, _ in sections) + "</ol></nav>"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>", toc]
    parts += [f"<h2 id=\"{sid}\">{_e(head)}</h2>\n{body_html}" for sid, head, body_html in sections]
    parts.append("</body></html>")
    return "\n".join(parts)


def _findings(summary: Mapping[str, Any], sig: Sequence[str], alpha: float) -> str:
    """The findings, calibrated worklist first; the any-class rule with its false-positive rate where it is stated."""
    anomaly, scan, n = summary["anomaly"], summary.get("scan_anomaly") or {}, summary["n_scans"]
    items = []
    if "n_flagged" in scan:
        items.append(f"<b>{scan['n_flagged']} of {n} scans flagged</b> by the scan-level score (listed first under "
                     f"<a href=\"#worklist\">Scans to look at first</a>, with why): a clean scan like the {scan['n_reference']} "
                     f"{_e(scan['reference'])} is flagged with probability {100 * scan['expected_false_positive_rate']:.1f} % "
                     f"(contamination {scan['contamination']:g}).")
    else:
        why = " ".join(scan.get("notes", [])) or "no scan-level score was computed"
        items.append(f"No scan-level score: {_e(why)}")
    held = scan.get("any_class_outlier_rate_held_out")
    items.append(f"The paper's per-class rule \u201coutlier for any class\u201d (one {_e(_detector(summary))} per class; a scan is an outlier "
                 f"when any of the {len(summary['per_class'])} forests calls it one) marks {anomaly['n_outlier_scans']} of {n} scans"
                 + (f"; the same rule marks {100 * held:.0f} % of held-out reference scans, so it is a description per class, "
                    "not a screen." if held is not None else "."))
    items.append(f"{_e(anomaly.get('detector_label', 'Isolation Forests'))} fitted on the {_e(anomaly['fitted_on'])} "
                 f"(random_state={_e(anomaly['random_state'])}).")
    items.append(f"Forest score correlates with Dice (BH q &lt; {alpha}) for: {_e(', '.join(sig) if sig else 'no class')}.")
    deps = summary.get("strongest_dependencies", [])
    if deps:
        d = deps[0]
        items.append(f"Strongest dependency: {_e(d['class'])} relies on region {_e(d['region'])} "
                     f"({100 * d['share']:.1f} % of its attribution mass on average).")
    bias = list(summary.get("bias_tests", []))
    if bias:
        n_sig = sum(1 for b in bias if b["q"] is not None and b["q"] < alpha)
        items.append(f"Bias tests: {len(bias)} run, {n_sig} with q &lt; {alpha} (<a href=\"#bias\">Bias</a>).")
    else:
        items.append(f"Bias tests: none run. {_NO_METADATA}")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


_NO_METADATA = ("Subgroups need metadata: pass <code>--metadata FILE</code> (a CSV/TSV with one row per scan, joined on "
                "<code>patient</code> or <code>image_id</code>; columns such as scanner, age, sex) or put the columns in the table.")


def _bias_section(summary: Mapping[str, Any], alpha: float) -> str:
    """The paper's outlier-vs-inlier tests, then the scan-level score's rank tests, then what was not tested."""
    bias = list(summary.get("bias_tests", []))
    out = []
    if bias:
        order = sorted(bias, key=lambda b: (b["q"] is None, b["q"] if b["q"] is not None else 1.0))
        out.append(f"<p class=\"note\">Outliers vs inliers per metadata column; group {_e('any_class')} = outlier for any class. "
                   f"q: Benjamini-Hochberg over all {len(bias)} tests.</p>")
        out.append(_table(["group", "column", "test", "outliers", "inliers", "p", "q", "effect", "size", "detail"],
                          [(b["group"], b["column"], b["test"], b["n_outliers"], b["n_inliers"], b["p"], b["q"], b["effect"], b["effect_size"], b["detail"]) for b in order],
                          numeric=[False, False, False, True, True, True, True, False, True, False],
                          highlight=[b["q"] is not None and b["q"] < alpha for b in order]))
    elif not summary.get("bias_skipped"):
        out.append(f"<p>No metadata column to test. {_NO_METADATA}</p>")
    else:
        out.append("<p>No metadata column could be tested (reasons below).</p>")
    out.append(_score_tests_section(summary, alpha))
    skipped = summary.get("bias_skipped", [])
    if skipped:
        out.append("<p class=\"note\">Not tested:</p>")
        out.append(_table(["group", "column", "reason"], [(s["group"], s["column"], s["reason"]) for s in skipped]))
    return "\n".join(out)


def _worklist_section(summary: Mapping[str, Any]) -> str:
    """The calibrated scan-level score and the worklist (scans to look at first, with why); empty when absent."""
    scan = summary.get("scan_anomaly")
    if not scan:
        return ""
    out = [f"<p class=\"note\">{_e(note)}</p>" for note in scan.get("notes", [])]
    if "n_flagged" not in scan:
        return "\n".join(out)
    out.append(
        f"<p>{scan['n_flagged']} of {summary['n_scans']} scans flagged: their scan-level score is higher than that of all but "
        f"{100 * float(scan['contamination']):g} % of the {scan['n_reference']} {_e(scan['reference'])} "
        f"(contamination {scan['contamination']:g}; expected false-positive rate on clean scans "
        f"{100 * scan['expected_false_positive_rate']:.1f} %). The list goes on past the flagged scans to at least ten, "
        "most unusual first.</p>")
    out.append(f"<p class=\"note\">How the score is made: {_e(scan['method'])}.</p>")
    rows = [(r["rank"], r["id"], r["score"], r["p_value"], "yes" if r["flagged"] else "no",
             "<br>".join(_e(part) for part in str(r.get("why", "")).split("; "))) for r in summary.get("worklist", [])]  # a line per class
    if rows:
        out.append(_table(["rank", "scan", "scan-level score", "calibrated p", "flagged",
                           "why: the classes (and evidence families) with the smallest per-class p, and what moved most against the reference: regions' shares, or the family's features"],
                          rows, numeric=[True, False, True, True, False, False], highlight=[r[4] == "yes" for r in rows], markup=5))
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


def _paper_section(summary: Mapping[str, Any], figures: Mapping[str, bytes], *, model_audit: bool = True) -> str:
    """The protocol and the paper's analyses: dependency graph, per-class boxplots, clustering, scan-level Spearman."""
    protocol = summary.get("protocol")
    if not protocol:
        return ""
    settings = protocol["settings"]
    shown = settings if model_audit else {k: v for k, v in settings.items() if k in ANALYSIS_SETTINGS}
    out = [f"<p class=\"note\">Protocol: {_e(protocol['label'])}. {'Settings' if model_audit else 'Analysis settings'}: "
           + _e(", ".join(f"{k}={v}" for k, v in shown.items())) + ".</p>"]
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
                          [("Spearman: mean forest score vs mean Dice", mean["rho"], mean["p"], mean["n"])],
                          numeric=[False, True, True, True]))
    if "mean_anomaly_vs_mean_dice" in figures:
        out.append(_figure(figures["mean_anomaly_vs_mean_dice"], FIGURE_CAPTIONS["mean_anomaly_vs_mean_dice"], "mean_anomaly_vs_mean_dice"))
    return "\n".join(out)

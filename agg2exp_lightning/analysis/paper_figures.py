"""Figures of the paper's analyses: the published dependency graph, per-class share boxplots, the
dendrogram of the class clustering and the mean forest score against the mean Dice.

Matplotlib's object API only (no pyplot); :func:`~agg2exp_lightning.analysis.figures.figure_png`
renders them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch
from matplotlib.ticker import MaxNLocator

from agg2exp_lightning.analysis.figures import MIN_FONT, PAGE_WIDTH_IN, radial_label
from agg2exp_lightning.analysis.graph import ClassClustering

__all__ = ["class_share_boxplots", "clustering_dendrogram", "dependency_matrix", "mean_anomaly_vs_mean_dice", "published_dependency_graph"]

_SIGN_STYLE = {"abs": ("tab:red", "-"), "positive": ("tab:red", "-"), "negative": ("tab:blue", "--")}


#: Above this many edges the circle graph is a hairball at page width; the same edges are drawn as a matrix.
MAX_CIRCLE_EDGES = 30


def published_dependency_graph(edges: pd.DataFrame, classes: Sequence[str], *, title: str = "") -> Figure:
    """The dependency graph: nodes on a circle, one arrow per edge ``region -> class``, width from ``width``.

    Self edges are drawn as loops. With a ``sign`` column, negative dependencies are dashed blue and
    positive ones solid red. Regions that are not classes (merged regions, extra masks) are black squares.
    With more than :data:`MAX_CIRCLE_EDGES` edges (the paper's top-5 rule over 17 classes gives 80) the
    circle cannot be read at page width, so the same edges are drawn as a matrix (:func:`dependency_matrix`).

    Args:
        edges: from :func:`~agg2exp_lightning.analysis.graph.dependency_edges` (or the signed variant).
        classes: the explained classes (round nodes).
        title: figure title.
    """
    if len(edges) > MAX_CIRCLE_EDGES:
        return dependency_matrix(edges, classes, title=title)
    nodes = list(dict.fromkeys([*edges["class"], *edges["region"]])) if len(edges) else []
    fig = Figure(figsize=(8, 7.6))
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.axis("off")
    pos = {n: (math.cos(math.pi / 2 - 2 * math.pi * k / max(len(nodes), 1)), math.sin(math.pi / 2 - 2 * math.pi * k / max(len(nodes), 1)))
           for k, n in enumerate(nodes)}
    signs = edges["sign"] if "sign" in edges else pd.Series(["abs"] * len(edges), index=edges.index)
    for (region, cls, width, is_self), sign in zip(edges[["region", "class", "width", "self"]].itertuples(index=False), signs):
        color, style = _SIGN_STYLE.get(sign, ("tab:red", "-"))
        (x1, y1), (x2, y2) = pos[region], pos[cls]
        if is_self:  # a loop: a small circle just outside the node
            ax.add_patch(Circle((1.07 * x1, 1.07 * y1), 0.06, fill=False, lw=1.5 * width, color=color, ls=style, alpha=0.7))
            continue
        ax.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=10, connectionstyle="arc3,rad=0.1",
                                     lw=1.5 * width, color=color, ls=style, alpha=0.6, shrinkA=9, shrinkB=9))
    for n, (x, y) in pos.items():
        ax.plot([x], [y], "o" if n in classes else "s", ms=9, color="tab:gray" if n in classes else "black")
        radial_label(ax, n, 1.1 * x, 1.1 * y)
    if not nodes:
        ax.text(0, 0, "no edge under this rule", ha="center", va="center")
    ax.set_xlim(-1.8, 1.8)
    ax.set_ylim(-1.4, 1.4)
    ax.set_title(title or "Dependency graph: region \u2192 explained class (width: mean share)", fontsize=9)
    return fig


def dependency_matrix(edges: pd.DataFrame, classes: Sequence[str], *, title: str = "") -> Figure:
    """The dependency graph's edges as a matrix: a row per explained class, a column per region, a disc per edge.

    The disc's area grows with the edge's ``width`` (the mean share, scaled as the graph's line widths); a
    ring marks the class's own region (the graph's loop); negative dependencies (``sign``) are blue.
    An audit draws the absolute graph; the signed variant is for callers that pass ``sign``.
    """
    rows = [c for c in classes if c in set(edges["class"])] or list(classes)
    cols = list(dict.fromkeys([*(c for c in classes if c in set(edges["region"])), *edges["region"]]))
    label_in = 0.075 * max((len(c) for c in rows), default=1)
    fig = Figure(figsize=(min(label_in + 1.0 + 0.42 * len(cols), PAGE_WIDTH_IN + 1.0), 2.0 + 0.34 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    signs = edges["sign"] if "sign" in edges else pd.Series(["abs"] * len(edges), index=edges.index)
    top = float(edges["width"].max()) if len(edges) else 1.0
    for (region, cls, width, is_self), sign in zip(edges[["region", "class", "width", "self"]].itertuples(index=False), signs):
        color = _SIGN_STYLE.get(sign, ("tab:red", "-"))[0]
        x, y = cols.index(region), rows.index(cls)
        size = 20 + 260 * float(width) / (top or 1.0)
        ax.scatter([x], [y], s=size, facecolors="none" if is_self else color, edgecolors=color, linewidths=1.5, alpha=0.85, zorder=3)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", rotation_mode="anchor", fontsize=MIN_FONT)
    ax.set_yticks(range(len(rows)), rows, fontsize=MIN_FONT)
    ax.set_xlim(-0.6, len(cols) - 0.4)
    ax.set_ylim(len(rows) - 0.4, -0.6)
    ax.grid(color="0.9", lw=0.6, zorder=0)
    ax.set_xlabel("region (the edge's source)", fontsize=9)
    ax.set_ylabel("explained class (the edge's target)", fontsize=9)
    negative = " blue: negative;" if (signs == "negative").any() else ""
    ax.set_title(title or f"Dependency graph as a matrix: {len(edges)} edges region \u2192 explained class\n"
                 f"(disc area: mean share;{negative} ring: the class's own region)", fontsize=10)
    return fig


def class_share_boxplots(mass: np.ndarray, classes: Sequence[str], regions: Sequence[str], *, exclude: Sequence[str] = ("background",)) -> Figure:
    """Per explained class, horizontal boxplots over scans of its shares in every region, ordered by median.

    As the paper's per-class figures (``global_<class>_tsv2``): background left out on both sides,
    NaN shares (absent regions under the ``nan`` convention) left out of each box. Every panel has the
    same share axis (labelled on the bottom row), so panels compare at a glance; three panels a row
    keep the table's region names at 8 points at page width.
    """
    mass = np.asarray(mass, dtype=float)
    shown = [i for i, a in enumerate(classes) if a not in exclude]
    cols = [j for j, b in enumerate(regions) if b not in exclude]
    n = max(len(shown), 1)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(min(3.2 * ncol, PAGE_WIDTH_IN), (0.15 * len(cols) + 0.6) * nrow + 0.5), layout="constrained")
    axes = fig.subplots(nrow, ncol, sharex=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for k, i in enumerate(shown):
        ax = axes[k]
        data = [mass[:, i, j][np.isfinite(mass[:, i, j])] for j in cols]
        medians = [np.median(d) if len(d) else -np.inf for d in data]
        order = np.argsort(medians, kind="stable")
        ax.boxplot([data[o] if len(data[o]) else [np.nan] for o in order], orientation="horizontal", widths=0.6, flierprops={"ms": 2})
        ax.set_yticks(range(1, len(order) + 1), [regions[cols[o]] for o in order], fontsize=MIN_FONT - 1)
        ax.tick_params(axis="x", labelsize=MIN_FONT, labelbottom=k + ncol >= n)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.grid(axis="x", color="0.9", lw=0.6)
        ax.set_title(classes[i], fontsize=9)
        if k >= n - ncol:
            ax.set_xlabel("share of the class's attribution", fontsize=MIN_FONT)
    fig.suptitle("Share of each explained class's attribution per region, over scans (background left out)", fontsize=10)
    return fig


def clustering_dendrogram(clustering: ClassClustering) -> Figure:
    """Dendrogram of the class clustering (leaves on the left, as the paper's rotated ``ggdendrogram``)."""
    from scipy.cluster.hierarchy import dendrogram

    fig = Figure(figsize=(6, 0.3 * len(clustering.labels) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    dendrogram(clustering.linkage, labels=list(clustering.labels), orientation="left", ax=ax,
               color_threshold=0, above_threshold_color="black", leaf_font_size=8)
    ax.set_xlabel("distance: max - sqrt(share)")
    ax.set_title(f"Classes clustered by their RoI profiles (average linkage, {clustering.rule} rule;\n"
                 f"cophenetic correlation {clustering.cophenetic_correlation:.2f})", fontsize=9)  # nan: all distances equal
    return fig


def mean_anomaly_vs_mean_dice(mean_score: np.ndarray, mean_dice: np.ndarray, rho: float, p: float) -> Figure:
    """Per scan: the mean forest score over classes against the mean Dice over classes."""
    fig = Figure(figsize=(5.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(mean_score, mean_dice, s=14, color="tab:blue")
    ax.set_xlabel("mean forest score over classes (higher = more unusual)")
    ax.set_ylabel("mean Dice over classes")
    ax.set_title(f"Spearman \u03c1 = {rho:.3f}, p = {p:.3g}" if np.isfinite(rho) else "Spearman \u03c1 undefined", fontsize=9)
    return fig

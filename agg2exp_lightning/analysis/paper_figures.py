"""Figures of the paper's analyses: the published dependency graph, per-class share boxplots, the
dendrogram of the class clustering and the mean anomaly score against the mean Dice.

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

from agg2exp_lightning.analysis.graph import ClassClustering

__all__ = ["class_share_boxplots", "clustering_dendrogram", "mean_anomaly_vs_mean_dice", "published_dependency_graph"]

_SIGN_STYLE = {"abs": ("tab:red", "-"), "positive": ("tab:red", "-"), "negative": ("tab:blue", "--")}


def _short(name: str) -> str:
    return name.replace("lung_", "").replace("_lobe", "").replace("_", " ")


def published_dependency_graph(edges: pd.DataFrame, classes: Sequence[str], *, title: str = "") -> Figure:
    """The dependency graph: nodes on a circle, one arrow per edge ``region -> class``, width from ``width``.

    Self edges are drawn as loops. With a ``sign`` column, negative dependencies are dashed blue and
    positive ones solid red. Regions that are not classes (merged regions, extra masks) are black squares.

    Args:
        edges: from :func:`~agg2exp_lightning.analysis.graph.dependency_edges` (or the signed variant).
        classes: the explained classes (round nodes).
        title: figure title.
    """
    nodes = list(dict.fromkeys([*edges["class"], *edges["region"]])) if len(edges) else []
    fig = Figure(figsize=(8, 8))
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
        ax.text(1.2 * x, 1.2 * y, _short(n), ha="center", va="center", fontsize=8)
    if not nodes:
        ax.text(0, 0, "no edge under this rule", ha="center", va="center")
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.4, 1.4)
    ax.set_title(title or "Dependency graph: region \u2192 explained class (width: mean share)", fontsize=9)
    return fig


def class_share_boxplots(mass: np.ndarray, classes: Sequence[str], regions: Sequence[str], *, exclude: Sequence[str] = ("background",)) -> Figure:
    """Per explained class, horizontal boxplots over scans of its shares in every region, ordered by median.

    As the paper's per-class figures (``global_<class>_tsv2``): background left out on both sides,
    NaN shares (absent regions under the ``nan`` convention) left out of each box.
    """
    mass = np.asarray(mass, dtype=float)
    shown = [i for i, a in enumerate(classes) if a not in exclude]
    cols = [j for j, b in enumerate(regions) if b not in exclude]
    n = max(len(shown), 1)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(4.2 * ncol, 0.22 * len(cols) * nrow + 1.2 * nrow))
    for k, i in enumerate(shown):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        data = [mass[:, i, j][np.isfinite(mass[:, i, j])] for j in cols]
        medians = [np.median(d) if len(d) else -np.inf for d in data]
        order = np.argsort(medians, kind="stable")
        ax.boxplot([data[o] if len(data[o]) else [np.nan] for o in order], orientation="horizontal", widths=0.6, flierprops={"ms": 2})
        ax.set_yticks(range(1, len(order) + 1), [_short(regions[cols[o]]) for o in order], fontsize=6)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(_short(classes[i]), fontsize=8)
    fig.suptitle("Share of each class's attribution per region, over scans (background left out)", fontsize=9)
    fig.tight_layout()
    return fig


def clustering_dendrogram(clustering: ClassClustering) -> Figure:
    """Dendrogram of the class clustering (leaves on the left, as the paper's rotated ``ggdendrogram``)."""
    from scipy.cluster.hierarchy import dendrogram

    fig = Figure(figsize=(5, 0.3 * len(clustering.labels) + 1.2))
    ax = fig.add_subplot()
    dendrogram(clustering.linkage, labels=[_short(n) for n in clustering.labels], orientation="left", ax=ax,
               color_threshold=0, above_threshold_color="black", leaf_font_size=8)
    ax.set_xlabel("distance: max - sqrt(share)")
    ax.set_title(f"Classes clustered by their RoI profiles (average linkage, {clustering.rule} rule;\n"
                 f"cophenetic correlation {clustering.cophenetic_correlation:.2f})", fontsize=9)  # nan: all distances equal
    return fig


def mean_anomaly_vs_mean_dice(mean_score: np.ndarray, mean_dice: np.ndarray, rho: float, p: float) -> Figure:
    """Per scan: the mean anomaly score over classes against the mean Dice over classes."""
    fig = Figure(figsize=(4.5, 3.8))
    ax = fig.add_subplot()
    ax.scatter(mean_score, mean_dice, s=14, color="tab:blue")
    ax.set_xlabel("mean anomaly score over classes (higher = more anomalous)")
    ax.set_ylabel("mean Dice over classes")
    ax.set_title(f"Spearman \u03c1 = {rho:.3f}, p = {p:.3g}" if np.isfinite(rho) else "Spearman \u03c1 undefined", fontsize=9)
    return fig

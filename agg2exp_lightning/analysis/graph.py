"""The published dependency graph and the hierarchical clustering of the classes (pure functions).

Both read the global RoI importance ``[A, B]`` (mean share ``e_{b->a}`` of class ``a``'s attribution
mass in region ``b``) and leave the background out on both sides, as the authors' R analysis does
(MI2DataLab/agg2exp, ``explanations/analyse_tcsnet.R``).

**Graph** (:func:`dependency_edges`). Per explained class ``a`` the regions are sorted by share,
largest first (ties keep the region order); the ``cumulative`` rule keeps them while the running sum
of shares stays ``<= cumulative_share`` (0.35 for TSV2 in the paper; a class whose strongest region
alone exceeds it gets no edge), the ``top_k`` rule keeps the ``k`` largest (ties at the k-th share
kept, as dplyr's ``top_n``). A class's own region is an edge like any other (a self loop). Edge width
is ``2 (w + 0.02) / (max w + 0.02)`` over the drawn edges, the published scaling. Regions that are
not classes (merged regions, extra masks such as a pathology) are nodes too.

**Clustering** (:func:`class_clustering`). The classes that are also regions, and the regions that are
not classes (extra masks such as a pathology, merged regions), form a square matrix
``M[a, b] = sqrt(e_{b->a})`` (NaN read as 0), names in alphabetical order. An extra region has no
explanation of its own: its row is zero except ``M[p, p] = max M``, as the R script adds pleural
effusion and consolidation (``rbind`` of a self row at ``max(weight)``, the rest ``NA`` read as 0), so
it joins the tree as a leaf placed by how much the classes' explanations lie in it. The distance is
``max(M) - M``. The published rule reads it as R's ``as.dist`` reads a non-symmetric matrix: entry
``(i, j)`` with ``i > j`` (its lower triangle), i.e. ``max - sqrt(e_{names[j] -> names[i]})``, one
direction per pair chosen by the alphabet. The ``symmetric`` rule uses the mean of both directions.
Average linkage (UPGMA, R's ``hclust(method="average")``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from agg2exp_lightning.utils.options import positive_int

__all__ = ["EDGE_EPS", "ClassClustering", "class_clustering", "dependency_edges", "signed_dependency_edges"]

#: The published edge-width offset: ``width = 2 (w + eps) / (max w + eps)``.
EDGE_EPS = 0.02
EDGE_COLUMNS = ["region", "class", "share", "cumulative_share", "width", "self"]


def _check(importance: np.ndarray, classes: Sequence[str], regions: Sequence[str]) -> np.ndarray:
    importance = np.asarray(importance, dtype=float)
    if importance.shape != (len(classes), len(regions)):
        raise ValueError(f"Expected `importance` of shape {(len(classes), len(regions))} (classes x regions), got {importance.shape}")
    return importance


def dependency_edges(
    importance: np.ndarray,
    classes: Sequence[str],
    regions: Sequence[str],
    *,
    rule: Literal["cumulative", "top_k"] = "cumulative",
    cumulative_share: float = 0.35,
    top_k: int = 5,
    exclude: Sequence[str] = ("background",),
) -> pd.DataFrame:
    """Edges ``region -> class`` of the published dependency graph (rule in the module docstring).

    Args:
        importance: ``[A, B]`` global RoI importance.
        classes: the ``A`` explained class names.
        regions: the ``B`` region names.
        rule: ``"cumulative"`` or ``"top_k"``.
        cumulative_share: limit of the running sum of shares per class (``cumulative``).
        top_k: edges per class (``top_k``).
        exclude: names left out as classes and as regions (the paper: background).

    Returns:
        Columns ``region``, ``class``, ``share``, ``cumulative_share`` (running sum within the class),
        ``width`` (published scaling), ``self`` (region is the class itself); classes in table order,
        each class's edges by share descending.

    Raises:
        ValueError: shapes that do not fit, an unknown rule, or limits out of range.

    Example:
        >>> dependency_edges(np.array([[0.3, 0.1]]), ["a"], ["a", "b"]).iloc[:, :3].values.tolist()
        [['a', 'a', 0.3]]
    """
    importance = _check(importance, classes, regions)
    if rule not in ("cumulative", "top_k"):
        raise ValueError(f"Expected `rule` to be 'cumulative' or 'top_k', but got {rule!r}")
    if not 0 < cumulative_share <= 1:
        raise ValueError(f"Expected `cumulative_share` in (0, 1], but got {cumulative_share!r}")
    positive_int("top_k", top_k)
    keep_regions = [j for j, b in enumerate(regions) if b not in exclude]
    rows: list[tuple[str, str, float, float]] = []
    for i, a in enumerate(classes):
        if a in exclude:
            continue
        cand = [(j, importance[i, j]) for j in keep_regions if np.isfinite(importance[i, j])]
        order = sorted(range(len(cand)), key=lambda k: -cand[k][1])  # stable: ties keep the region order
        shares = np.array([cand[k][1] for k in order])
        running = np.cumsum(shares)
        if rule == "cumulative":
            chosen = [k for k, c in zip(order, running) if c <= cumulative_share]
        else:
            threshold = shares[min(top_k, len(shares)) - 1] if len(shares) else np.inf
            chosen = [k for k, s in zip(order, shares) if s >= threshold]
        for pos, k in enumerate(chosen):
            rows.append((regions[cand[k][0]], a, float(cand[k][1]), float(running[pos])))
    frame = pd.DataFrame(rows, columns=["region", "class", "share", "cumulative_share"])
    top = float(frame["share"].max()) if len(frame) else 0.0
    frame["width"] = 2 * (frame["share"] + EDGE_EPS) / (top + EDGE_EPS)
    frame["self"] = frame["region"] == frame["class"]
    return frame[EDGE_COLUMNS]


def signed_dependency_edges(
    positive: np.ndarray,
    negative: np.ndarray,
    classes: Sequence[str],
    regions: Sequence[str],
    **rule: object,
) -> pd.DataFrame:
    """:func:`dependency_edges` of the positive and of the negative parts, apart, with a ``sign`` column.

    Each part is selected by its own rule (its shares are of its own mass); widths are scaled over
    both parts together so that a thick negative edge means as much mass as a thick positive one.
    """
    parts = []
    for sign, imp in (("positive", positive), ("negative", negative)):
        edges = dependency_edges(imp, classes, regions, **rule)  # type: ignore[arg-type]
        edges.insert(2, "sign", sign)
        parts.append(edges)
    frame = pd.concat(parts, ignore_index=True)
    top = float(frame["share"].max()) if len(frame) else 0.0
    frame["width"] = 2 * (frame["share"] + EDGE_EPS) / (top + EDGE_EPS)
    return frame


@dataclass(frozen=True)
class ClassClustering:
    """Hierarchical clustering of the classes by their RoI profiles.

    Attributes:
        labels: the clustered names: classes that are regions and regions that are not classes
            (alphabetical; index = leaf id in ``linkage``).
        distance: ``[n, n]`` the distances used (symmetric; zero diagonal).
        linkage: scipy linkage matrix ``[n - 1, 4]`` (average linkage).
        order: leaf order of the dendrogram (labels).
        cophenetic_correlation: Pearson correlation of the distances with the cophenetic ones
            (R's ``cor(d0, cophenetic(h))``).
        rule: ``"paper"`` or ``"symmetric"``.
    """

    labels: tuple[str, ...]
    distance: np.ndarray
    linkage: np.ndarray
    order: tuple[str, ...]
    cophenetic_correlation: float
    rule: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for ``summary.json``."""
        return {"rule": self.rule, "method": "average", "labels": list(self.labels), "order": list(self.order),
                "linkage": [[float(v) for v in row] for row in self.linkage],
                "cophenetic_correlation": float(self.cophenetic_correlation) if np.isfinite(self.cophenetic_correlation) else None}


def class_clustering(
    importance: np.ndarray,
    classes: Sequence[str],
    regions: Sequence[str],
    *,
    rule: Literal["paper", "symmetric"] = "paper",
    exclude: Sequence[str] = ("background",),
) -> ClassClustering | None:
    """Average-linkage clustering of the classes on ``max - sqrt(share)`` (rules in the module docstring).

    Args:
        importance: ``[A, B]`` global RoI importance.
        classes: the ``A`` explained class names.
        regions: the ``B`` region names.
        rule: ``"paper"`` (R's ``as.dist`` lower triangle, alphabetical order) or ``"symmetric"``.
        exclude: names left out (the paper: background).

    Returns:
        A :class:`ClassClustering`, or ``None`` when fewer than 3 names are clustered.
    """
    from scipy.cluster.hierarchy import cophenet, leaves_list, linkage
    from scipy.spatial.distance import squareform

    importance = _check(importance, classes, regions)
    if rule not in ("paper", "symmetric"):
        raise ValueError(f"Expected `rule` to be 'paper' or 'symmetric', but got {rule!r}")
    own = [a for a in classes if a in regions and a not in exclude]
    extra = [b for b in regions if b not in classes and b not in exclude]
    names = sorted(own + extra)
    if len(names) < 3:
        return None
    rows = [k for k, n in enumerate(names) if n in own]
    ci = [list(classes).index(names[k]) for k in rows]
    ri = [list(regions).index(n) for n in names]
    m = np.zeros((len(names), len(names)))
    m[rows] = np.sqrt(np.nan_to_num(importance[np.ix_(ci, ri)], nan=0.0).clip(min=0))
    top = m.max()
    for k, n in enumerate(names):  # an extra region's row: only itself, at the largest weight (the R script's rbind)
        if n in extra:
            m[k, k] = top
    full = m.max() - m
    if rule == "paper":
        lower = np.tril(full, -1)
        dist = lower + lower.T
    else:
        dist = (full + full.T) / 2
    np.fill_diagonal(dist, 0.0)
    condensed = squareform(dist, checks=False)
    z = linkage(condensed, method="average")
    coph, _ = cophenet(z, condensed)
    order = tuple(names[k] for k in leaves_list(z))
    return ClassClustering(labels=tuple(names), distance=dist, linkage=z, order=order, cophenetic_correlation=float(coph), rule=rule)

"""Figures of a cohort audit, drawn with matplotlib's object API (no pyplot, no global state).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`figure_png` renders one to
PNG bytes with the Agg canvas, so nothing depends on the display backend.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch
from matplotlib.ticker import FuncFormatter, MaxNLocator

#: Resolution the figures are written at, and the widest figure (inches) the report shows without shrinking:
#: its column is about 1,100 CSS pixels, so at 110 dpi a figure up to 10 inches wide keeps an 8-point label
#: 12 pixels high. Figures use 8-point text or larger and the table's names (``lung_upper_lobe_left``).
DPI = 110
PAGE_WIDTH_IN = 9.5
#: Smallest font size (points) in a figure.
MIN_FONT = 8


def settle_layout(fig: Figure) -> Figure:
    """Lay ``fig`` out once and freeze that layout: a constrained layout moves by a pixel or so on each new draw,
    so without this the PNG written and a later render of the same figure differ."""
    if fig.get_layout_engine() is not None:
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    return fig


def figure_png(fig: Figure, *, dpi: int = DPI) -> bytes:
    """PNG bytes of ``fig`` (its layout settled first, :func:`settle_layout`)."""
    settle_layout(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def radial_label(ax: Any, name: str, x: float, y: float, *, radius: float = 1.1, **kwargs: Any) -> None:
    """Write a node's name outside a unit circle, aligned away from the centre (so arcs inside never run over it)."""
    ha = "left" if x > 0.15 else "right" if x < -0.15 else "center"
    va = "bottom" if y > 0.15 else "top" if y < -0.15 else "center"
    ax.text(radius * x, radius * y, name, ha=ha, va=va, fontsize=MIN_FONT, zorder=5,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}, **kwargs)


def importance_heatmap(importance: np.ndarray, classes: Sequence[str], regions: Sequence[str]) -> Figure:
    """Heatmap of the global RoI importance (rows: explained classes, columns: regions).

    Colours use a square-root scale so that small shares stay visible next to the background;
    each cell is annotated with its share in percent.
    """
    importance = np.asarray(importance, dtype=float)
    if importance.shape != (len(classes), len(regions)):
        raise ValueError(f"Expected `importance` of shape {(len(classes), len(regions))}, got {importance.shape}")
    label_in = 0.075 * max((len(c) for c in classes), default=1)  # the row names' width at 8 pt
    width = min(label_in + 1.3 + 0.45 * len(regions), PAGE_WIDTH_IN + 1.5)
    fig = Figure(figsize=(width, 2.2 + 0.36 * len(classes)), layout="constrained")
    ax = fig.add_subplot()
    vmax = float(np.nanmax(importance)) if np.isfinite(importance).any() else 1.0
    im = ax.imshow(importance, cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=max(vmax, 1e-12)), aspect="auto")
    ax.set_xticks(range(len(regions)), list(regions), rotation=60, ha="right", rotation_mode="anchor", fontsize=MIN_FONT)
    ax.set_yticks(range(len(classes)), list(classes), fontsize=MIN_FONT)
    ax.set_xlabel("region b (predicted segmentation)", fontsize=9)
    ax.set_ylabel("explained class a", fontsize=9)
    ax.set_title("Mean share of class a's attribution in region b, in percent", fontsize=10)
    for i in range(len(classes)):
        for j in range(len(regions)):
            v = importance[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{100 * v:.0f}" if v >= 0.005 else "", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.5 * vmax else "white")
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, format=FuncFormatter(lambda v, _pos: f"{100 * v:.0f}"))
    bar.set_label("mean share (%, square-root colour scale)", fontsize=9)
    bar.ax.tick_params(labelsize=MIN_FONT)
    return fig


def share_distributions(own: np.ndarray, background: np.ndarray | None, classes: Sequence[str]) -> Figure:
    """Boxplots over scans, per class, of the own-region share and the background share.

    Args:
        own: ``[N, A]`` share of each class's attribution in its own region.
        background: ``[N, A]`` share in the background region, or ``None``.
        classes: the ``A`` class names.
    """
    panels = [("own-region share", np.asarray(own, dtype=float))]
    if background is not None:
        panels.append(("background share", np.asarray(background, dtype=float)))
    fig = Figure(figsize=(min(4.75 * len(panels), PAGE_WIDTH_IN), 0.3 * len(classes) + 1.5), layout="constrained")
    for k, (title, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        data = [values[:, i][np.isfinite(values[:, i])] for i in range(len(classes))]
        ax.boxplot(data, orientation="horizontal", tick_labels=list(classes), showfliers=True, widths=0.6, flierprops={"ms": 3})
        ax.invert_yaxis()
        ax.set_xlabel("share of the class's attribution mass", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=MIN_FONT)
        ax.grid(axis="x", alpha=0.3)
        if k:
            ax.set_yticklabels([])
    fig.suptitle("Per-class distribution over scans", fontsize=10)
    return fig


def dependency_graph(dependencies: pd.DataFrame, nodes: Sequence[str]) -> Figure:
    """Directed graph of the strongest region -> class dependencies, nodes on a circle.

    Args:
        dependencies: columns ``region``, ``class``, ``share`` (from
            :func:`~agg2exp_lightning.analysis.importance.strongest_dependencies`).
        nodes: node names, in the order placed around the circle.
    """
    fig = Figure(figsize=(8.0, 7.6))
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.axis("off")
    angle = {n: math.pi / 2 - 2 * math.pi * k / max(len(nodes), 1) for k, n in enumerate(nodes)}
    pos = {n: (math.cos(t), math.sin(t)) for n, t in angle.items()}
    top = float(dependencies["share"].max()) if len(dependencies) else 0.0
    top = top if top > 0 else 1.0
    rad = 0.3
    for region, cls, share in dependencies[["region", "class", "share"]].itertuples(index=False):
        if region not in pos or cls not in pos:
            continue
        width = 0.5 + 5.0 * share / top
        (x1, y1), (x2, y2) = pos[region], pos[cls]
        ax.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=12 + 6 * share / top,
                                     connectionstyle=f"arc3,rad={rad}", lw=width, color="tab:red", alpha=0.35 + 0.55 * share / top,
                                     shrinkA=14, shrinkB=14))
        # midpoint of arc3's quadratic Bezier: the chord's midpoint moved rad/2 along its normal;
        # opposite directions bend to opposite sides, so A->B and B->A labels do not collide
        mx, my = (x1 + x2) / 2 + 0.5 * rad * (y2 - y1), (y1 + y2) / 2 - 0.5 * rad * (x2 - x1)
        ax.text(mx, my, f"{100 * share:.1f}%", fontsize=MIN_FONT, ha="center", va="center", color="darkred",
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    used = set(dependencies["region"]) | set(dependencies["class"])
    for n, (x, y) in pos.items():
        ax.plot([x], [y], "o", ms=9, color="tab:blue" if n in used else "lightgray")
        radial_label(ax, n, x, y)
    if not len(dependencies):
        ax.text(0, 0, "no dependency outside own regions and background", ha="center", va="center", fontsize=9)
    ax.set_xlim(-1.75, 1.75)
    ax.set_ylim(-1.3, 1.3)
    ax.set_title("Strongest dependencies: region \u2192 explained class\n(mean share of the class's attribution in the region; own region and background left out)", fontsize=9)
    return fig


def anomaly_vs_dice(scores: np.ndarray, dice: np.ndarray, outliers: np.ndarray, classes: Sequence[str], correlation: pd.DataFrame) -> Figure:
    """Small multiples: forest score vs Dice per class, outliers for the class as red crosses, Spearman rho in titles.

    Every panel shares the forest-score axis (0, dashed, is the forest's outlier threshold); three ticks per axis.
    """
    n = len(classes)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(min(1.9 * cols, PAGE_WIDTH_IN), 1.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for i, c in enumerate(classes):
        ax = axes[i]
        ok = np.isfinite(scores[:, i]) & np.isfinite(dice[:, i])
        out = ok & outliers[:, i]
        ax.scatter(scores[ok & ~out, i], dice[ok & ~out, i], s=10, color="tab:blue")
        ax.scatter(scores[out, i], dice[out, i], s=14, color="tab:red", marker="x")
        rho = correlation.loc[c, "rho"] if c in correlation.index else np.nan
        q = correlation.loc[c, "q"] if c in correlation.index else np.nan
        ax.set_title(f"{c}\n\u03c1={rho:.2f}, q={q:.2g}", fontsize=MIN_FONT)
        ax.tick_params(labelsize=MIN_FONT, labelbottom=i + cols >= n)  # the lowest panel of each column shows the shared axis
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.yaxis.set_major_locator(MaxNLocator(3))
        ax.axvline(0.0, color="gray", lw=0.6, ls="--")
    fig.supxlabel("forest score of the class (higher = more unusual; right of the dashed line: outlier for the class, \u00d7)", fontsize=9)
    fig.supylabel("Dice", fontsize=9)
    return fig


def _rgb(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    scaled = (values - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(values)
    return colormaps[cmap](np.clip(scaled, 0.0, 1.0))[..., :3]


def case_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *, title: str) -> Figure:
    """Slices of several scans, one row each: image, predicted labels, |attribution| over the image.

    The panels are composed into one RGB mosaic (one axes), which keeps many case figures cheap.
    Slices are shown transposed with the first array axis to the right and the second upwards
    (for RAS arrays: the patient's right to the right, anterior up).

    Args:
        rows: ``(label, image [H, W], prediction [H, W], attribution [H, W])`` per scan; the
            label (e.g. scan id and anomaly score) is written beside the row. Rows may differ in size.
        title: figure title (e.g. the class).
    """
    if not rows:
        raise ValueError("Expected at least one row in `rows`")
    tiles, labels = [], []
    for r, (label, image, prediction, attribution) in enumerate(rows):
        image, prediction, attribution = (np.asarray(x, dtype=float) for x in (image, prediction, attribution))
        if not (image.shape == prediction.shape == attribution.shape) or image.ndim != 2:
            raise ValueError(f"Expected image, prediction and attribution of one 2D shape in row {r}, got "
                             f"{image.shape}, {prediction.shape}, {attribution.shape}")
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        gray = _rgb(image, "gray", lo, hi)
        mag = np.abs(attribution)
        alpha = np.clip(mag / mag.max(), 0, 1)[..., None] if mag.max() > 0 else np.zeros((*mag.shape, 1))
        overlay = (1 - 0.8 * alpha) * gray + 0.8 * alpha * _rgb(mag, "inferno", 0.0, float(mag.max()) or 1.0)
        tiles.append([t.transpose(1, 0, 2)[::-1] for t in (gray, _rgb(prediction, "tab20", 0, 19), overlay)])
        labels.append(label)
    h = max(t[0].shape[0] for t in tiles)
    w = max(t[0].shape[1] for t in tiles)
    gap = max(2, w // 20)
    mosaic = np.ones((len(tiles) * (h + gap), 3 * (w + gap), 3))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = r * (h + gap), c * (w + gap)
            mosaic[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    width = 7.5
    fig = Figure(figsize=(width, 0.76 * width * mosaic.shape[0] / mosaic.shape[1] / 0.9 + 0.4))
    ax = fig.add_axes((0.22, 0.02, 0.76, 0.9))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for c, name in enumerate(("image", "prediction", "|attribution|")):
        ax.text(c * (w + gap) + w / 2, -gap, name, ha="center", va="bottom", fontsize=9)
    for r, label in enumerate(labels):
        ax.text(-gap, r * (h + gap) + h / 2, label, ha="right", va="center", fontsize=7)
    ax.set_title(title, fontsize=10, pad=24)
    return fig

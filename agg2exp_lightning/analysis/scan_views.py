"""Figures of one scan a radiologist reads at a glance: three views through a class's attribution peak,
and the attribution mass along the body axis.

The arrays are in RAS voxel order (as nibabel's ``as_closest_canonical`` gives them: x towards the
patient's right, y anterior, z superior) with their voxel sizes, so the views are drawn with the right
aspect: axial ``[:, :, z]``, coronal ``[:, y, :]``, sagittal ``[x, :, :]``, each with the anterior or
superior side up.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

__all__ = ["CT_WINDOWS", "attribution_peak", "mass_profile", "mass_profile_figure", "three_view_figure", "window_ct"]

#: CT display windows as (level, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {"lung": (-600.0, 1500.0), "soft_tissue": (40.0, 400.0)}


def window_ct(hu: np.ndarray, window: Literal["lung", "soft_tissue"] = "soft_tissue") -> np.ndarray:
    """HU mapped to [0, 1] by a display window (clipped)."""
    level, width = CT_WINDOWS[window]
    return np.clip((np.asarray(hu, dtype=np.float32) - (level - width / 2)) / width, 0.0, 1.0)


def attribution_peak(attribution: np.ndarray) -> tuple[int, int, int]:
    """The voxel of the largest ``|attribution|`` (the first one on ties)."""
    a = np.abs(np.asarray(attribution, dtype=np.float64))
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(a)), a.shape))  # type: ignore[return-value]


def _views(volume: np.ndarray, peak: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices through ``peak``, transposed so that rows run along the second axis
    named (``imshow(origin="lower")`` then puts anterior/superior up)."""
    x, y, z = peak
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def three_view_figure(
    ct_hu: np.ndarray,
    attribution: np.ndarray,
    prediction: np.ndarray | None = None,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    target: int | None = None,
    window: Literal["lung", "soft_tissue"] = "soft_tissue",
    signed: bool = False,
    title: str = "",
):
    """Axial, coronal and sagittal views through the attribution peak, with a colour bar.

    Args:
        ct_hu: ``[X, Y, Z]`` CT in HU (RAS voxel order).
        attribution: ``[X, Y, Z]`` attribution of one class on the same grid.
        prediction: ``[X, Y, Z]`` label map; the contour of ``target`` is drawn.
        spacing: voxel sizes in mm (aspect of the views).
        target: the class whose predicted region is outlined (``None``: no contour).
        window: CT display window (:data:`CT_WINDOWS`).
        signed: a diverging colour map symmetric about 0 (else ``|attribution|`` in one hue).
        title: the figure's title.

    Returns:
        A matplotlib ``Figure``: per view an ``AxesImage`` of the windowed CT, one of the attribution
        (transparent where 0) and, when drawn, a contour; the last axes hold the colour bar.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ct, attr = np.asarray(ct_hu), np.asarray(attribution, dtype=np.float32)
    if ct.shape != attr.shape or ct.ndim != 3 or (prediction is not None and np.shape(prediction) != ct.shape):
        raise ValueError(f"Expected CT, attribution (and prediction) of one shape [X, Y, Z], got {ct.shape}, {attr.shape}"
                         + ("" if prediction is None else f", {np.shape(prediction)}"))
    peak = attribution_peak(attr)
    shown = attr if signed else np.abs(attr)
    vmax = float(np.abs(shown).max()) or 1.0
    cmap, vmin = ("RdBu_r", -vmax) if signed else ("inferno", 0.0)
    sx, sy, sz = (float(s) for s in spacing)
    aspects = [sy / sx, sz / sx, sz / sy]
    names = [f"axial z={peak[2]}", f"coronal y={peak[1]}", f"sagittal x={peak[0]}"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, 0.06]})
    windowed = window_ct(ct, window)
    image = None
    for k, (ax, name) in enumerate(zip(axes[:3], names)):
        ax.imshow(_views(windowed, peak)[k], cmap="gray", vmin=0.0, vmax=1.0, origin="lower", aspect=aspects[k])
        overlay = np.ma.masked_where(_views(shown, peak)[k] == 0, _views(shown, peak)[k])
        image = ax.imshow(overlay, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6, origin="lower", aspect=aspects[k])
        if prediction is not None and target is not None:
            region = (_views(np.asarray(prediction), peak)[k] == target).astype(np.float32)
            if 0 < region.sum() < region.size:
                ax.contour(region, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, cax=axes[3], label="attribution" if signed else "|attribution|")
    fig.suptitle(f"{title} (CT {window.replace('_', ' ')} window)".strip(), fontsize=10)
    return fig


def mass_profile(attribution: np.ndarray, axis: int = 2) -> np.ndarray:
    """Share of the ``|attribution|`` mass in each slice along ``axis`` (sums to 1; zeros when there is none)."""
    a = np.abs(np.asarray(attribution, dtype=np.float64))
    per_slice = a.sum(axis=tuple(i for i in range(a.ndim) if i != axis))
    total = per_slice.sum()
    return per_slice / total if total > 0 else per_slice


def mass_profile_figure(attributions: Mapping[str, np.ndarray], *, spacing_z: float = 1.0, title: str = ""):
    """Per class, the share of its attribution mass per axial slice along the body axis (inferior -> superior, mm)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, attribution in attributions.items():
        profile = mass_profile(attribution)
        ax.plot(np.arange(profile.size) * float(spacing_z), profile, label=name)
    ax.set_xlabel("position along the body axis (mm, inferior -> superior)")
    ax.set_ylabel("share of |attribution| mass")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig

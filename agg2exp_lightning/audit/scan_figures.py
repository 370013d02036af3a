"""Three-view figures of chosen scans, drawn from their NIfTI maps (``--save-maps``) and CT in HU.

For each scan on the audit's worklist (and each id of ``--figures-for``) and each explained class:
axial, coronal and sagittal views through the class's attribution peak over the CT in a display window,
with the predicted region's contour and a colour bar (:func:`~agg2exp_lightning.analysis.scan_views.three_view_figure`),
plus one plot of each class's attribution mass along the body axis. ``figures/scans/index.html`` links
every figure to the NIfTI files it was drawn from.
"""
from __future__ import annotations

import html
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agg2exp_lightning.analysis.figures import figure_png
from agg2exp_lightning.analysis.scan_views import mass_profile_figure, three_view_figure
from agg2exp_lightning.audit.maps import map_paths, maps_written
from agg2exp_lightning.audit.scan_records import record_stem
from agg2exp_lightning.utils import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["draw_scan_figures", "scan_figures_for_audit"]


def _canonical(path: Path, series: str | None = None) -> tuple[np.ndarray, tuple[float, ...]]:
    """The volume (any format :func:`~agg2exp_lightning.data.reading.read_volume` reads) in RAS voxel order, and its spacing."""
    import nibabel as nib

    from agg2exp_lightning.data.reading import read_volume

    data, affine = read_volume(path, what="three-view figure", series=series)
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data), affine))
    return np.asarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3])


def draw_scan_figures(maps_folder: str | Path, figures_folder: str | Path, scan_id: str, image_path: str | Path,
                      class_names: Sequence[str], *, window: Literal["lung", "soft_tissue"] = "soft_tissue",
                      signed: bool = False, series: str | None = None) -> list[dict[str, Any]]:
    """Draw one scan's three-view figures (one per class with a map) and its mass profile.

    ``image_path`` is the scan in any format :func:`~agg2exp_lightning.data.reading.read_volume` reads (``series``
    picks one series of a DICOM folder).

    Returns:
        ``[{"scan", "class", "figure": Path, "nifti": [Path, ...]}]``, the profile as class ``"profile"``.

    Raises:
        OSError, ValueError: a file cannot be read or the maps do not fit the CT (the caller reports it);
            DataError is a ValueError.
    """
    figures_folder = Path(figures_folder)
    paths = map_paths(maps_folder, scan_id, class_names)
    present = [c for c in class_names if paths[c].is_file()]
    ct, spacing = _canonical(Path(image_path), series)
    prediction, _ = _canonical(paths["prediction"])
    stem = record_stem(scan_id)
    entries, maps = [], {}
    for cls in present:
        attribution, _ = _canonical(paths[cls])
        maps[cls] = attribution
        fig = three_view_figure(ct, attribution, prediction, spacing=spacing, target=list(class_names).index(cls),
                                window=window, signed=signed, title=f"{scan_id}: {cls}")
        out = atomic_write_bytes(figures_folder / f"{stem}_{record_stem(cls)}.png", figure_png(fig, dpi=90))
        entries.append({"scan": scan_id, "class": cls, "figure": out, "nifti": [paths[cls], paths["prediction"]]})
    if maps:
        fig = mass_profile_figure(maps, spacing_z=spacing[2], title=f"{scan_id}: attribution mass along the body axis")
        out = atomic_write_bytes(figures_folder / f"{stem}_profile.png", figure_png(fig, dpi=90))
        entries.append({"scan": scan_id, "class": "profile", "figure": out, "nifti": [paths[c] for c in maps]})
    return entries


def _index_page(entries: Sequence[Mapping[str, Any]], folder: Path) -> str:
    def link(path: Path) -> str:
        rel = os.path.relpath(path, folder)
        return f'<a href="{html.escape(rel)}">{html.escape(Path(path).name)}</a>'

    rows = []
    for e in entries:
        rel = os.path.relpath(e["figure"], folder)
        rows.append(f'<tr><td>{html.escape(e["scan"])}</td><td>{html.escape(e["class"])}</td>'
                    f'<td><a href="{html.escape(rel)}"><img src="{html.escape(rel)}" width="420"></a></td>'
                    f'<td>{"<br>".join(link(p) for p in e["nifti"])}</td></tr>')
    return ("<!doctype html><meta charset=utf-8><title>Scans in three views</title>"
            "<h1>Scans in three views</h1><p>Each figure links to the NIfTI files it was drawn from (open them in "
            "ITK-SNAP or 3D Slicer with <code>maps/labels_itksnap.txt</code>).</p>"
            "<table border=1 cellpadding=4><tr><th>scan</th><th>class</th><th>figure</th><th>NIfTI</th></tr>"
            + "".join(rows) + "</table>")


def scan_figures_for_audit(out_dir: str | Path, images: Mapping[str, str | Path], scan_ids: Sequence[str],
                           class_names: Sequence[str], *, window: Literal["lung", "soft_tissue"] = "soft_tissue",
                           series: Mapping[str, str] | None = None) -> Path | None:
    """Draw the figures of ``scan_ids`` (those with maps) into ``<out>/figures/scans/`` and write its ``index.html``.

    ``series`` gives, per scan id, the series of a DICOM folder with several.

    A scan without maps, unknown, or whose files cannot be drawn is reported by name; the others are drawn.

    Returns:
        The index page, or ``None`` when no figure was drawn.
    """
    out = Path(out_dir)
    folder = out / "figures" / "scans"
    entries: list[dict[str, Any]] = []
    for sid in dict.fromkeys(scan_ids):
        if sid not in images:
            log.warning("--figures-for: %s is not an audited scan", sid)
            continue
        if not maps_written(out / "maps", sid):
            log.warning("no three-view figures for scan %s: it has no maps (--save-maps)", sid)
            continue
        try:
            entries += draw_scan_figures(out / "maps", folder, sid, images[sid], class_names, window=window,
                                         series=(series or {}).get(sid))
        except (OSError, ValueError) as err:
            log.warning("three-view figures of scan %s not drawn: %s: %s", sid, type(err).__name__, err)
    if not entries:
        return None
    index = atomic_write_text(folder / "index.html", _index_page(entries, folder))
    log.info("three-view figures of %d scans: %s", len({e["scan"] for e in entries}), index)
    return index

"""What the explanation monitor draws: the heatmap holds the scans' mean shares, the overlay the scan's attribution."""
from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import torch
from matplotlib import colormaps
from monitor_helpers import TinySegmenter, loaders, make_trainer, scans  # noqa: I001 - beside this file

import agg2exp_lightning.callbacks.explanation_monitor as explanation_monitor
from agg2exp_lightning.callbacks import ExplanationMonitor
from agg2exp_lightning.explain import explain


def _fit_and_capture(tmp_path, monkeypatch):
    drawn: dict[str, tuple] = {}
    original = explanation_monitor.log_figure

    def capture(trainer, key, fig):
        path = original(trainer, key, fig)
        drawn[key] = (fig, path)
        return path

    monkeypatch.setattr(explanation_monitor, "log_figure", capture)
    torch.manual_seed(0)
    module = TinySegmenter()
    monitor = ExplanationMonitor(every_n_epochs=1, method="vanilla_gradient", num_scans=3, targets=["organ", "bone"],
                                 overlay_classes=["organ"], at_train_end=False)
    make_trainer(tmp_path, [monitor], max_epochs=1).fit(module, *loaders())
    return module, monitor, drawn


def _pixels(fig) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # as the monitor saves it
    buf.seek(0)
    return matplotlib.image.imread(buf)


def test_heatmap_and_overlay_show_the_explained_data(tmp_path, monkeypatch):
    module, monitor, drawn = _fit_and_capture(tmp_path, monkeypatch)
    assert set(drawn) == {"agg2exp/global_roi_importance", "agg2exp/overlay"}
    check = monitor.latest

    # heatmap: rows organ, bone; columns the three regions; each cell the mean share over the three scans
    fig, path = drawn["agg2exp/global_roi_importance"]
    (image,) = fig.axes[0].get_images()
    expected = np.nanmean(np.asarray(check.roi, dtype=float), axis=0)
    assert expected.shape == (2, 3)
    np.testing.assert_allclose(np.ma.getdata(image.get_array()), expected, rtol=1e-12)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)  # each class's shares sum to one
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["organ", "bone"]
    np.testing.assert_array_equal(matplotlib.image.imread(path), _pixels(fig))  # the PNG on disk is this figure

    # overlay: the first monitored scan, organ's attribution at the axial slice with the most |attribution|
    fig, path = drawn["agg2exp/overlay"]
    scan = scans(3, 2)[0]
    assert fig.axes[0].get_title() == f"{scan['subject_id']}: attributions, epoch 0"
    direct = explain(module.net, scan["image"], method="vanilla_gradient", targets=[1]).attributions[0].abs()
    z = int(direct.sum(dim=(0, 1)).argmax())
    assert f"organ (z={z})" in [t.get_text() for t in fig.axes[0].texts]
    (mosaic,) = fig.axes[0].get_images()
    pixels = np.asarray(mosaic.get_array())
    h, w = direct.shape[1], direct.shape[0]  # tiles are transposed: first axis to the right
    gap = max(2, w // 20)
    overlay = pixels[:h, 2 * (w + gap): 2 * (w + gap) + w]
    gray = pixels[:h, :w]  # the image panel
    # at the voxel of largest |attribution| in that slice (second axis upwards) the overlay is 0.8 parts
    # inferno's brightest colour over 0.2 parts the image; its neighbours are less covered
    i, j = np.unravel_index(int(direct[..., z].argmax()), direct.shape[:2])
    r, c = h - 1 - j, i
    np.testing.assert_allclose(overlay[r, c], 0.2 * gray[r, c] + 0.8 * np.array(colormaps["inferno"](1.0)[:3]), atol=1e-6)
    covered = np.abs(overlay - gray).sum(axis=-1)
    assert np.unravel_index(int(covered.argmax()), covered.shape) == (r, c)
    np.testing.assert_array_equal(matplotlib.image.imread(path), _pixels(fig))

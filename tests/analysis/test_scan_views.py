"""Three-view figures and the mass profile: the drawn arrays are the windowed CT and attribution slices
through the peak, the contour and colour bar are there, the profile is the hand-computed one."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from agg2exp_lightning.analysis.scan_views import mass_profile, mass_profile_figure, three_view_figure, window_ct  # noqa: E402

PEAK = (5, 3, 7)


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1000, 1000, size=(10, 8, 12)).astype(np.float32)
    attribution = np.zeros((10, 8, 12), np.float32)
    attribution[PEAK] = -4.0  # the peak of |attribution| (negative: signed and absolute views differ)
    attribution[2, 2, 2] = 1.0
    prediction = np.zeros((10, 8, 12), np.uint8)
    prediction[3:8, 1:6, 5:10] = 2
    return ct, attribution, prediction


def test_window_known_values():
    assert window_ct(np.array([-600.0]), "lung")[0] == pytest.approx(0.5)
    assert window_ct(np.array([40.0, -1000.0, 500.0]), "soft_tissue").tolist() == pytest.approx([0.5, 0.0, 1.0])


def test_views_pass_through_the_peak_and_show_ct_attribution_contour_and_colour_bar(volume):
    ct, attribution, prediction = volume
    fig = three_view_figure(ct, attribution, prediction, spacing=(1.0, 1.0, 2.0), target=2, window="lung", title="s0: heart")
    axial, coronal, sagittal, bar = fig.axes
    x, y, z = PEAK
    expected_ct = [window_ct(ct, "lung")[:, :, z].T, window_ct(ct, "lung")[:, y, :].T, window_ct(ct, "lung")[x, :, :].T]
    expected_attr = [np.abs(attribution)[:, :, z].T, np.abs(attribution)[:, y, :].T, np.abs(attribution)[x, :, :].T]
    for ax, want_ct, want_attr in zip((axial, coronal, sagittal), expected_ct, expected_attr):
        ct_image, attr_image = ax.images
        np.testing.assert_allclose(np.asarray(ct_image.get_array()), want_ct)
        drawn = np.ma.filled(attr_image.get_array(), 0.0)
        np.testing.assert_allclose(drawn, want_attr)
        assert drawn.max() == 4.0  # every view passes through the peak
        assert ax.collections  # the predicted region's contour
    assert [ax.get_title() for ax in (axial, coronal, sagittal)] == ["axial z=7", "coronal y=3", "sagittal x=5"]
    assert axial.images[1].get_clim() == (0.0, 4.0) and bar.get_ylabel() == "|attribution|"
    assert coronal.images[0].get_extent()  # drawn with origin lower: superior up
    assert coronal.get_aspect() == pytest.approx(2.0)  # z voxels twice as long as x
    plt.close(fig)

    signed = three_view_figure(ct, attribution, spacing=(1, 1, 2), signed=True)
    image = signed.axes[0].images[1]
    assert image.get_clim() == (-4.0, 4.0) and image.get_cmap().name == "RdBu_r"
    assert np.ma.filled(image.get_array(), 0.0).min() == -4.0
    plt.close(signed)


def test_mismatched_shapes_are_refused(volume):
    ct, attribution, _ = volume
    with pytest.raises(ValueError, match="one shape"):
        three_view_figure(ct, attribution[:-1])


def test_mass_profile_is_the_share_per_axial_slice():
    a = np.zeros((4, 4, 6))
    a[0, 0, 2] = 1.0
    a[1:3, 1, 5] = -1.5  # |.| sums to 3 in slice 5
    np.testing.assert_allclose(mass_profile(a), [0, 0, 0.25, 0, 0, 0.75])
    fig = mass_profile_figure({"heart": a, "none": np.zeros((4, 4, 6))}, spacing_z=2.5)
    heart, none = fig.axes[0].lines
    np.testing.assert_allclose(heart.get_xdata(), np.arange(6) * 2.5)
    np.testing.assert_allclose(heart.get_ydata(), [0, 0, 0.25, 0, 0, 0.75])
    np.testing.assert_allclose(none.get_ydata(), 0.0)
    plt.close(fig)

"""Plain-word phrases: a value against its reference median, with unit, reference and a non-empty difference."""
from __future__ import annotations

import re

import numpy as np
import pytest

from agg2exp_lightning.analysis.anomaly import describe_worklist_row
from agg2exp_lightning.analysis.wording import SHARE, describe_against_reference, is_unchanged


@pytest.mark.parametrize(
    ("name", "unit", "value", "median", "expected"),
    [
        # the case: the share IS 0.67 against 0.86, 19 points lower (not "down 67 %")
        ("background share", SHARE, 0.67, 0.86, "background share 0.67, reference median 0.86: 19 points lower"),
        # small shares that used to print "up 0% (ref median 0%)" / "down 0% (ref median 5%)"
        ("sternum share", SHARE, 0.0036, 0.0013, "sternum share 0.0036, reference median 0.0013: 0.23 points higher"),
        ("lung_middle_lobe_right share", SHARE, 0.004, 0.05,
         "lung_middle_lobe_right share 0.004, reference median 0.050: 4.6 points lower"),
        ("heart share", SHARE, 0.5, 0.5, "heart share 0.50, reference median 0.50: unchanged"),
        ("sternum share", SHARE, 0.00201, 0.0020, "sternum share 0.002, reference median 0.002: unchanged"),
        ("heart volume", "ml", 412.0, 665.0, "heart volume 412 ml, reference median 665 ml: 38 % lower"),
        ("heart volume", "ml", 666.0, 665.0, "heart volume 666 ml, reference median 665 ml: unchanged"),
        ("heart volume", "ml", 672.0, 665.0, "heart volume 672 ml, reference median 665 ml: 1.1 % higher"),
        ("lesions", "", 3.0, 0.0, "lesions 3, reference median 0: higher"),
        ("attribution mass", "", 0.0125, 0.01, "attribution mass 0.0125, reference median 0.01: 25 % higher"),
    ],
)
def test_known_phrases(name, unit, value, median, expected):
    assert describe_against_reference(name, unit, value, median) == expected


def test_no_empty_difference_and_direction_matches_the_numbers():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        v, m = rng.choice([0.0, 1e-4, 1e-3, 0.01, 0.3]) * rng.random(2)
        phrase = describe_against_reference("x share", SHARE, v, m)
        assert not re.search(r": 0(\.0)? points", phrase), phrase
        diff = 100 * (v - m)
        if phrase.endswith("unchanged"):
            assert abs(diff) < 0.05 and is_unchanged(SHARE, v, m)
            continue
        m_ = re.fullmatch(r"x share ([\d.]+), reference median ([\d.]+): ([\d.]+) points (higher|lower)", phrase)
        shown_v, shown_m, amount = (float(g) for g in m_.groups()[:3])
        assert (m_.group(4) == "higher") == (v > m)
        # the printed difference is the exact one rounded, and the printed shares subtract to it
        decimals = len(m_.group(3).partition(".")[2])
        assert amount == pytest.approx(round(abs(diff), decimals), abs=1.01 * 10.0**-decimals)
        assert abs(100 * (shown_v - shown_m)) == pytest.approx(amount, abs=1.01 * 10.0**-decimals)


def test_non_finite_is_refused_naming_the_feature():
    with pytest.raises(ValueError, match="heart volume"):
        describe_against_reference("heart volume", "ml", float("nan"), 1.0)


def test_worklist_reason_skips_unchanged_regions_and_names_the_reference():
    row = {"classes": [
        {"class": "heart", "p": 0.024, "absent": False, "regions": [
            {"region": "background", "share": 0.67, "reference_median": 0.86},
            {"region": "sternum", "share": 0.00201, "reference_median": 0.0020}]},
        {"class": "aorta", "p": 0.05, "absent": True, "regions": []},
        {"class": "esophagus", "p": 0.1, "absent": False, "regions": [
            {"region": "trachea", "share": 0.1, "reference_median": 0.1}]},
    ]}
    assert describe_worklist_row(row) == (
        "heart (per-class p 0.024): background share 0.67, reference median 0.86: 19 points lower; "
        "aorta (per-class p 0.05): class not predicted; "
        "esophagus (per-class p 0.1): no region's share differs visibly from the reference median")

"""The default reference: a held-out split where there is one; the training split only with a note."""
from __future__ import annotations

import pytest

from agg2exp_lightning.analysis.cohort import analyze_cohort
from agg2exp_lightning.analysis.report import render_report
from agg2exp_lightning.analysis.tables import parse_explanation_table
from agg2exp_lightning.audit.reference import TRAINING_REFERENCE_NOTE, choose_reference_split


@pytest.mark.parametrize(("audited", "splits", "expected"), [
    ("test", {"train", "val", "test"}, "val"),
    ("test", {"train", "validation", "test"}, "validation"),
    ("val", {"train", "val", "test"}, "test"),  # another held-out split before the training one
    ("test", {"train", "test"}, "train"),
    ("test", {"test"}, None),
    ("train", {"train"}, None),
])
def test_a_held_out_split_is_preferred_to_the_training_split(audited, splits, expected):
    split, note = choose_reference_split(audited, splits)
    assert split == expected
    assert (note is not None) == (expected == "train")
    if note:
        assert "exchangeable" in note and "'train'" in note


def test_the_training_reference_note_reaches_the_summary_and_the_report(make_frame):
    reference = parse_explanation_table(make_frame(20, 0, seed=1))
    audited = parse_explanation_table(make_frame(12, 0, seed=2))
    note = TRAINING_REFERENCE_NOTE.format(split="train")
    analysis = analyze_cohort(audited, reference, n_bootstrap=0, reference_notes=[note])
    summary = analysis.summary()
    assert summary["scan_anomaly"]["notes"][0] == note and summary["scan_anomaly"]["reference"] == "reference scans"
    assert "exchangeable" in render_report(summary, {}, inputs={})
    # a reference too small for the score is replaced by the audited scans: its caveat no longer applies
    small = analyze_cohort(audited, parse_explanation_table(make_frame(6, 0, seed=3)), n_bootstrap=0, reference_notes=[note])
    assert note not in small.summary()["scan_anomaly"]["notes"]

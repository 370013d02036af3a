"""Progress of a long audit: a bar over the sample batches unless quiet, the time left per scan."""
from __future__ import annotations

import logging

import pytest

from agg2exp_lightning.audit import scan_prediction
from agg2exp_lightning.audit.checkpoint_audit import make_scan_explainer
from agg2exp_lightning.audit.scan_prediction import ScanRecordWriter, _duration


def test_sample_bars_follow_the_log_level_and_an_explicit_option_wins():
    logger = logging.getLogger("agg2exp_lightning.audit.checkpoint_audit")
    old = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert make_scan_explainer("smoothgrad").keywords["progress"] is True
        logger.setLevel(logging.WARNING)  # what -q sets
        assert make_scan_explainer("smoothgrad").keywords["progress"] is False
        assert make_scan_explainer("smoothgrad", {"progress": True}).keywords["progress"] is True
    finally:
        logger.setLevel(old)


def test_time_left_is_the_mean_pace_times_the_scans_to_go(monkeypatch, tmp_path):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(scan_prediction.time, "monotonic", lambda: next(clock))

    class Trainer:
        num_predict_batches = [5]

    writer = ScanRecordWriter({"audited": tmp_path}, total=9)
    assert writer.eta_seconds() is None
    writer.on_predict_start(Trainer(), None)  # t = 100
    writer.done = 2
    assert writer.eta_seconds() == pytest.approx(15.0)  # t = 110: 5 s per scan, 3 to go


@pytest.mark.parametrize(("seconds", "text"), [(12.4, "12 s"), (250, "4 min 10 s"), (3900, "1 h 05 min")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert _duration(seconds) == text

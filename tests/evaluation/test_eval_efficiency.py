"""Efficiency: timing with an injected clock (no wall-clock assertions)."""
from __future__ import annotations

import pytest

from agg2exp_lightning.evaluation import explanation_efficiency, timed


def _clock(readings):
    it = iter(readings)
    return lambda: next(it)


def test_timed_returns_the_value_and_the_clock_difference():
    value, seconds = timed(lambda a, b: a + b, 2, b=3, clock=_clock([10.0, 12.5]))
    assert value == 5 and seconds == 2.5


def test_all_classes_then_one_class_are_timed_and_the_full_output_is_reused():
    calls = []

    def explain(targets):
        calls.append(list(targets))
        return f"maps for {targets}"

    result, output = explanation_efficiency(explain, [4, 1, 7], clock=_clock([0.0, 9.0, 9.5, 12.5]))
    assert calls == [[4, 1, 7], [4]]
    assert output == "maps for [4, 1, 7]"
    assert (result.seconds_all_classes, result.seconds_one_class, result.n_classes) == (9.0, 3.0, 3)


def test_empty_targets_are_refused():
    with pytest.raises(ValueError, match="`targets`"):
        explanation_efficiency(lambda t: None, [])

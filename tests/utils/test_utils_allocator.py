"""glibc's allocator told to keep freed memory (what agg2exp-train does before training)."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from agg2exp_lightning.utils import allocator


def _is_glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _is_glibc()), reason="mallopt is glibc's")
def test_settings_take_effect_on_glibc_and_memory_still_works():
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True  # calling it again is harmless
    block = bytearray(allocator.MMAP_THRESHOLD_MAX // 2)  # served from the heap now; still usable
    block[-1] = 7
    assert block[-1] == 7


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_training_entry_point_sets_it(monkeypatch):
    from agg2exp_lightning.training import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli.run, "train", lambda argv: None)
    assert cli.main(["fit", "--config", "demo"]) == 0 and calls == [1]

"""Atomic writes and the removal of temporaries that killed writes leave behind."""
from __future__ import annotations

import os
import time

import pytest

from agg2exp_lightning.checkpoint_io import atomic_torch_save, remove_stale_partials
from agg2exp_lightning.utils.files import TEMPORARY_PATTERN, atomic_write, atomic_write_text, remove_temporaries


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "a.txt", "old")

    def half_then_fail(f):
        f.write(b"new, half writt")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_remove_temporaries_touches_only_old_temporaries(tmp_path):
    killed = tmp_path / ".last.ckpt.4242.deadbeef.tmp"  # the name atomic_write gives its temporary
    fresh = tmp_path / ".last.ckpt.4243.0badf00d.tmp"
    mine = tmp_path / ".notes.tmp"  # not an atomic_write name
    for p in (killed, fresh, mine):
        p.write_bytes(b"x")
    assert TEMPORARY_PATTERN.fullmatch(killed.name) and not TEMPORARY_PATTERN.fullmatch(mine.name)
    hour_ago = time.time() - 3600
    os.utime(killed, (hour_ago, hour_ago))
    assert remove_temporaries(tmp_path, older_than_s=60) == [killed]
    assert fresh.exists() and mine.exists()
    assert remove_stale_partials(tmp_path) == [fresh]  # the checkpoint folder's cleaner is the same rule
    assert mine.exists() and remove_temporaries(tmp_path / "missing") == []


def test_atomic_torch_save_round_trips(tmp_path):
    torch = pytest.importorskip("torch")
    atomic_torch_save({"w": torch.arange(3)}, f"file://{tmp_path}/ckpt/last.ckpt")
    assert torch.equal(torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["w"], torch.arange(3))
    assert os.listdir(tmp_path / "ckpt") == ["last.ckpt"]

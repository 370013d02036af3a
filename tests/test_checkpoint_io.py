"""Atomic checkpoints: a failed or killed write keeps the old file, and nothing half-written is left as the checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from agg2exp_lightning.checkpoint_io import AtomicCheckpointIO, atomic_torch_save, remove_stale_partials
from agg2exp_lightning.utils.files import TEMPORARY_PATTERN


class _DiesWhenPickled:
    """Raises while torch.save is writing the checkpoint (a full disk, a crash of the writer)."""

    def __reduce__(self):
        raise OSError(28, "No space left on device")


class _InterruptedWhenPickled:
    def __reduce__(self):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write


def _old_checkpoint(folder):
    path = folder / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, path)
    return path, path.read_bytes()


def test_save_and_load_round_trip_leaves_only_the_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"  # the folder is created
    io.save_checkpoint({"epoch": 3, "state_dict": {"w": torch.eye(2)}}, path)
    loaded = io.load_checkpoint(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.eye(2))
    assert os.listdir(path.parent) == ["last.ckpt"]
    io.save_checkpoint({"epoch": 4}, path)  # over an existing checkpoint
    assert io.load_checkpoint(path, weights_only=True)["epoch"] == 4 and os.listdir(path.parent) == ["last.ckpt"]


@pytest.mark.parametrize(("poison", "error"), [(_DiesWhenPickled, OSError), (_InterruptedWhenPickled, KeyboardInterrupt)])
def test_a_write_that_fails_midway_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path, poison, error):
    path, old = _old_checkpoint(tmp_path)
    big = {"epoch": 2, "w": torch.ones(256, 256), "z": poison()}  # fails after the tensors were queued
    with pytest.raises(error):
        AtomicCheckpointIO().save_checkpoint(big, path)
    assert path.read_bytes() == old  # byte for byte the previous checkpoint
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_a_writer_that_fails_after_writing_bytes_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path, old = _old_checkpoint(tmp_path)
    seen = []

    def half_a_checkpoint(obj, f):
        f.write(b"PK\x03\x04" + b"\0" * 4096)  # the start of a zip file, then the writer dies
        seen.append(f.name)
        raise RuntimeError("writer died")

    monkeypatch.setattr(torch, "save", half_a_checkpoint)
    with pytest.raises(RuntimeError, match="writer died"):
        atomic_torch_save({"epoch": 2}, path)
    # the half-written bytes went to a temporary beside the target (same file system), never to the target
    (written,) = seen
    assert os.path.dirname(written) == str(tmp_path) and TEMPORARY_PATTERN.fullmatch(os.path.basename(written))
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["last.ckpt"]


def test_a_process_killed_mid_write_leaves_the_old_checkpoint_and_a_temporary_the_next_run_removes(tmp_path):
    path, old = _old_checkpoint(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from agg2exp_lightning.checkpoint_io import AtomicCheckpointIO

        class KilledWhenPickled:
            def __reduce__(self):
                os.kill(os.getpid(), signal.SIGKILL)  # no except/finally runs: as if the machine stopped

        AtomicCheckpointIO().save_checkpoint({{"epoch": 2, "w": torch.ones(64), "z": KilledWhenPickled()}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert path.read_bytes() == old
    leftovers = [name for name in os.listdir(tmp_path) if name != "last.ckpt"]
    assert len(leftovers) == 1 and TEMPORARY_PATTERN.fullmatch(leftovers[0])  # beside the target, recognisable
    assert remove_stale_partials(tmp_path) == [tmp_path / leftovers[0]]
    assert os.listdir(tmp_path) == ["last.ckpt"] and torch.load(path, weights_only=True)["epoch"] == 1


def test_remote_paths_and_storage_options_keep_lightnings_writer(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint",
                        lambda self, checkpoint, path, storage_options=None: calls.append((str(path), storage_options)))
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, "s3://bucket/run/last.ckpt")
    io.save_checkpoint({"epoch": 1}, tmp_path / "a.ckpt", storage_options={"anon": True})
    assert calls == [("s3://bucket/run/last.ckpt", None), (str(tmp_path / "a.ckpt"), {"anon": True})]
    io.save_checkpoint({"epoch": 1}, f"file://{tmp_path}/b.ckpt")  # a local URL is written atomically here
    assert len(calls) == 2 and torch.load(tmp_path / "b.ckpt", weights_only=True) == {"epoch": 1}

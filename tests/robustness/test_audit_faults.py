"""Faults during an audit: killed at random moments, a full disk, a read-only output folder.

A killed audit, started again with the same command, must end with exactly the results of an
uninterrupted run; a write that fails must say which folder and keep what was finished before.
"""
from __future__ import annotations

import builtins
import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agg2exp_lightning.audit.cli import main as audit_main

REPO = Path(__file__).resolve().parents[2]
FAST_AUDIT = ("--method", "vg", "--spacing", "12", "12", "12", "--split", "test")
RESULTS = ("per_scan.csv", "summary.json", "failed_scans.json", "audit.json")


def _test_split(root: Path, ids: set[str]) -> None:
    """Put exactly ``ids`` in the test split of ``root/meta.csv``."""
    path = root / "meta.csv"
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines(), delimiter=";"))
    col = rows[0].index("split")
    for row in rows[1:]:
        row[col] = "test" if row[0] in ids else "train"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter=";").writerows(rows)


def _results(out: Path) -> dict[str, bytes]:
    """The audit's tables and per-scan records, byte for byte (no timing fields are written)."""
    files = {name: (out / name).read_bytes() for name in RESULTS}
    files.update({f"scans/{p.name}": p.read_bytes() for p in sorted((out / "scans").iterdir())})
    return files


def _table(tmp_path: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_audit_conftest", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "table.csv"
    module.synthetic_frame(30, 3).to_csv(path, index=False)
    return path


# -- (a) killed at random moments ---------------------------------------------------------------------


@pytest.mark.slow
def test_audit_killed_at_random_moments_finishes_with_the_uninterrupted_results(cohort_copy, tiny_checkpoint, tmp_path):
    _test_split(cohort_copy, {"s0005", "s0006", "s0007"})
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, str(REPO / "audit.py"), "--checkpoint", str(tiny_checkpoint), "--data", str(cohort_copy),
                "--out", str(out), *FAST_AUDIT, "-q"]

    start = time.monotonic()
    ref = subprocess.run(command(tmp_path / "uninterrupted"), env=env, capture_output=True, text=True, timeout=900)
    full_run = time.monotonic() - start
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = _results(tmp_path / "uninterrupted")

    out, rng = tmp_path / "killed", random.Random(7)
    kills, states = 0, []
    for attempt in range(12):
        proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(0.1, 0.45) * full_run if kills < 4 else None
        try:
            proc.wait(timeout=delay if delay is not None else 900)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            # what a kill leaves behind: every record that has its final name is complete
            done = sorted(p.name for p in (out / "scans").glob("*.json")) if (out / "scans").is_dir() else []
            states.append(done)
            for name in done:
                json.loads((out / "scans" / name).read_text())
            continue
        assert proc.returncode == 0, proc.stderr.read()[-3000:]
        break
    else:
        pytest.fail("the audit did not finish after 12 starts")
    assert kills >= 2, f"only {kills} kill(s) landed while the audit ran"
    assert _results(out) == expected, f"records present at each kill: {states}"
    assert not list(out.rglob("*.tmp"))


# -- (b) a full disk and a read-only output folder -----------------------------------------------------


def _failing_writes(monkeypatch, under: Path, code: int, *, when=lambda path: True):
    """Make every write (and folder creation) under ``under`` fail with ``OSError(code)``, as a full or
    read-only file system would: ``open`` in a write mode and ``os.mkdir`` are the lowest calls the audit
    (and pandas, matplotlib) write through. Returns the list of refused paths."""
    refused: list[str] = []
    real_open, real_mkdir = builtins.open, os.mkdir
    root = str(under.resolve())

    def inside(file) -> bool:
        return isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)).startswith(root) and when(os.fspath(file))

    def open_(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            refused.append(os.fspath(file))
            raise OSError(code, os.strerror(code), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.isdir(path):
            refused.append(os.fspath(path))
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)
    return refused


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_table_audit_on_a_full_or_read_only_disk_names_the_folder_and_keeps_results(code, tmp_path, monkeypatch, capsys):
    table, out = _table(tmp_path), tmp_path / "out"
    argv = ["--from-table", str(table), "--out", str(out), "-q"]
    assert audit_main(argv) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    with monkeypatch.context() as m:
        refused = _failing_writes(m, out, code)
        rc = audit_main(argv)  # the same audit again: it rewrites its outputs
    err = capsys.readouterr().err
    assert refused and rc == 1
    assert err.startswith(f"agg2exp-audit: error: cannot write to the output folder {out}") and os.strerror(code) in err
    assert errno.errorcode[code] in err and "Traceback" not in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing lost, nothing half-written, no temporary file left


def test_new_audit_in_a_read_only_place_names_the_folder(tmp_path, monkeypatch, capsys):
    table, ro = _table(tmp_path), tmp_path / "readonly"
    ro.mkdir()
    with monkeypatch.context() as m:
        _failing_writes(m, ro, errno.EROFS)
        rc = audit_main(["--from-table", str(table), "--out", str(ro / "audit"), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot write to the output folder {ro / 'audit'}" in err and "Read-only file system (EROFS)" in err
    assert list(ro.iterdir()) == []


@pytest.mark.slow
def test_checkpoint_audit_disk_full_mid_run_keeps_finished_scans_and_resumes(cohort_copy, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    _test_split(cohort_copy, {"s0006", "s0007"})
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_checkpoint), "--data", str(cohort_copy), "--out", str(out), *FAST_AUDIT, "-q"]
    with monkeypatch.context() as m:  # the disk fills up when the second scan is written
        refused = _failing_writes(m, out / "scans", errno.ENOSPC, when=lambda p: "s0007" in p)
        rc = audit_main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and refused and "s0007" in err and "No space left on device (ENOSPC)" in err and str(out) in err
    first = (out / "scans" / "s0006.json").read_bytes()
    assert not (out / "scans" / "s0007.json").exists() and not list(out.rglob("*.tmp"))
    assert audit_main(argv) == 0  # space again: only the missing scan is explained
    assert (out / "scans" / "s0006.json").read_bytes() == first
    assert sorted(p.name for p in (out / "scans").glob("*.json")) == ["s0006.json", "s0007.json"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod; see the monkeypatched tests")
def test_read_only_out_folder_by_permissions(tmp_path, capsys):
    table, out = _table(tmp_path), tmp_path / "out"
    argv = ["--from-table", str(table), "--out", str(out), "-q"]
    assert audit_main(argv) == 0
    summary = (out / "summary.json").read_bytes()
    out.chmod(0o555)
    try:
        rc = audit_main(argv)
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot write to the output folder {out}" in err and "Permission denied" in err
    assert (out / "summary.json").read_bytes() == summary

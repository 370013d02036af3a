"""The output folder: resume the same audit, refuse another, overwrite only audit files."""
from __future__ import annotations

import json

import pytest

from agg2exp_lightning.audit.output_folder import open_output_folder
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.utils.files import atomic_write_json, atomic_write_text, fingerprint


def test_same_audit_resumes_other_audit_is_refused(tmp_path):
    out = tmp_path / "out"
    assert open_output_folder(out, {"table_sha256": "abc", "random_state": 123}) == "new"
    (out / "scans").mkdir()
    (out / "scans" / "s1.json").write_text("{}")
    assert open_output_folder(out, {"random_state": 123, "table_sha256": "abc"}) == "resume"  # key order irrelevant
    assert (out / "scans" / "s1.json").exists()
    with pytest.raises(DataError, match=r"another audit \(differs in: random_state\).*--overwrite"):
        open_output_folder(out, {"table_sha256": "abc", "random_state": 7})


def test_overwrite_removes_only_audit_files(tmp_path):
    out = tmp_path / "out"
    open_output_folder(out, {"a": 1})
    (out / "summary.json").write_text("{}")
    (out / "figures").mkdir()
    (out / "notes.txt").write_text("mine")
    assert open_output_folder(out, {"a": 2}, overwrite=True) == "new"
    assert not (out / "summary.json").exists() and not (out / "figures").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "audit.json").read_text())["fingerprint"] == fingerprint({"a": 2})


def test_audit_files_without_manifest_are_refused(tmp_path):
    (tmp_path / "report.html").write_text("<html></html>")
    with pytest.raises(DataError, match=r"holds audit files \['report.html'\] without audit.json"):
        open_output_folder(tmp_path, {"a": 1})
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file"):
        open_output_folder(tmp_path / "file", {"a": 1})


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "x" / "a.txt", "hello")
    atomic_write_json(tmp_path / "x" / "b.json", {"v": None})
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["a.txt", "b.json"]
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x" / "c.json", {"v": float("nan")})  # strict JSON
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["a.txt", "b.json"]

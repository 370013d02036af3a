"""The generic fingerprinted output folder, with a kind other than the audit's."""
from __future__ import annotations

import json

import pytest

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.utils.files import fingerprint
from agg2exp_lightning.utils.output_folder import OutputFolderKind, config_fingerprint, open_output_folder

KIND = OutputFolderKind(manifest="job.json", outputs=("job.json", "out.csv", "parts"), job="a job", label="`out`",
                        remedy="pick another")


def test_resume_refuse_and_overwrite(tmp_path):
    out = tmp_path / "o"
    assert open_output_folder(out, {"a": 1, "p": (1, 2)}, KIND) == "new"
    stored = json.loads((out / "job.json").read_text())
    assert stored == {"fingerprint": fingerprint({"a": 1, "p": [1, 2]}), "config": {"a": 1, "p": [1, 2]}}
    assert config_fingerprint({"p": (1, 2), "a": 1}) == stored["fingerprint"]  # tuples stored as lists
    (out / "parts" / "x").mkdir(parents=True)
    leftover = out / "parts" / "x" / ".r.csv.12.0123abcd.tmp"
    leftover.write_text("half")
    assert open_output_folder(out, {"p": [1, 2], "a": 1}, KIND) == "resume"
    assert not leftover.exists()
    with pytest.raises(DataError, match=r"^`out` .* holds the results of another job \(differs in: a\); pick another$"):
        open_output_folder(out, {"a": 2, "p": [1, 2]}, KIND)
    (out / "mine.txt").write_text("kept")
    assert open_output_folder(out, {"a": 2}, KIND, overwrite=True) == "new"
    assert not (out / "parts").exists() and (out / "mine.txt").read_text() == "kept"


def test_unknown_or_damaged_folders_are_refused(tmp_path):
    (tmp_path / "out.csv").write_text("x")
    with pytest.raises(DataError, match=r"holds job files \['out.csv'\] without job.json; pick another"):
        open_output_folder(tmp_path, {"a": 1}, KIND)
    (tmp_path / "job.json").write_bytes(b"\xff{")
    with pytest.raises(DataError, match="its job.json is not the JSON a job writes"):
        open_output_folder(tmp_path, {"a": 1}, KIND)
    assert open_output_folder(tmp_path, {"a": 1}, KIND, overwrite=True) == "new"

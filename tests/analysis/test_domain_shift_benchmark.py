"""benchmarks/domain_shift.py: the ranking on a cohort whose outliers are known, and the script end to end on the real-CT crops."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[2]
CROPS = ROOT / "tests" / "data" / "real_ct"
HEADER = "| rank | scan | source | scan-level score | calibrated p | flagged | the worklist's top reason |"


@pytest.fixture(scope="module")
def shift(load_benchmark):
    return load_benchmark("domain_shift")


def test_ranking_puts_the_planted_scans_first_and_marks_them(shift, make_frame):
    """Two planted rows (their attribution in other regions) play the real scans: known to be the most anomalous."""
    from agg2exp_lightning.analysis.cohort import analyze_cohort
    from agg2exp_lightning.analysis.tables import parse_explanation_table

    classes = ["background", "aorta", "trachea", "heart", "ribs", "sternum"]
    audited = make_frame(10, 2, seed=5)
    audited["patient"] = [f"s{i:04d}" for i in range(10)] + ["chest_cta", "lung2_image"]
    reference = make_frame(20, 0, seed=6)
    reference["patient"] = [f"r{i:04d}" for i in range(20)]
    analysis = analyze_cohort(parse_explanation_table(audited, classes), parse_explanation_table(reference, classes), n_bootstrap=0)
    rows = shift.ranking(analysis, {"chest_cta": "real", "lung2_image": "real"})
    assert len(rows) == 12 and {r["scan"] for r in rows[:2]} == {"chest_cta", "lung2_image"}
    assert [r["source"] for r in rows].count("real") == 2 and all(r["source"] == "real" for r in rows[:2])
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows) and rows[0]["rank"] == 1
    assert all(r["top_reason"] and "per-class p" in r["top_reason"] for r in rows[:10])  # the worklist's 10 rows
    assert all(r["top_reason"] == "- (below the worklist)" for r in rows[10:])


def test_the_documented_command_parses(shift):
    text = (ROOT / "docs" / "auditing.md").read_text(encoding="utf-8")
    (command,) = [line for line in text.splitlines() if line.startswith("python benchmarks/domain_shift.py")]
    args = shift.build_parser().parse_args(shlex.split(command)[2:])
    assert args.checkpoint == "runs/demo/checkpoints/best-*.ckpt" and args.out == "runs/domain_shift"
    assert [Path(p).name for p in args.real] == ["chest_cta.nii.gz", "lung2_image.nrrd"]
    assert all(Path(p).resolve().parent == (ROOT / ".." / "shared" / "data" / "real_ct").resolve() for p in args.real)


def test_bad_arguments_exit_2_with_one_line(shift, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        shift.main(["--checkpoint", "x.ckpt", "--n-reference", "9", "--real", str(CROPS / "chest_cta_crop.nii.gz")])
    assert exit_.value.code == 2 and "at least 10 reference scans" in capsys.readouterr().err
    assert shift.main(["--checkpoint", str(tmp_path / "none-*.ckpt"), "--real", str(CROPS / "chest_cta_crop.nii.gz")]) == 2
    assert "expected exactly one file, found none" in capsys.readouterr().err


def _tiny_checkpoint(path: Path) -> Path:
    """An untrained tiny Swin-UNETR (17 thorax classes) at 12 mm voxels: fast, and nothing to rank with."""
    import torch

    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32), norm_name=("group", {"num_groups": 3}))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"spacing": [12.0, 12.0, 12.0]}}, path)
    return path


@pytest.mark.slow
def test_end_to_end_on_the_real_ct_crops(shift, tmp_path):
    """Tiny settings: 4 synthetic audited + 10 reference scans and the two real crops; the table's form, not its ranking."""
    (tmp_path / "ckpts").mkdir()
    _tiny_checkpoint(tmp_path / "ckpts" / "best-epoch=00.ckpt")
    out = tmp_path / "out"
    real = [str(CROPS / "chest_cta_crop.nii.gz"), str(CROPS / "lung2_image_crop.nrrd")]
    argv = ["--checkpoint", str(tmp_path / "ckpts" / "best-*.ckpt"), "--out", str(out), "--real", *real, "--n-synthetic", "4",
            "--n-reference", "10", "--shape", "40", "--spacing", "8", "--targets", "heart", "trachea", "--accelerator", "cpu"]
    assert shift.main(argv) == 0

    lines = (out / "results.md").read_text().splitlines()
    assert lines[0].startswith("Hardware: ")
    start = lines.index(HEADER)
    rows = [line for line in lines[start + 2 :] if line.startswith("| ")]
    rows = rows[: next((i for i, r in enumerate(rows) if r.startswith("| class |")), len(rows))]
    assert len(rows) == 6
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert [int(c[0]) for c in cells] == sorted(int(c[0]) for c in cells) and int(cells[0][0]) == 1
    scores = [float(c[3]) for c in cells]
    assert scores == sorted(scores, reverse=True)
    assert sorted(c[1] for c in cells if c[2] == "**real**") == ["**chest_cta_crop**", "**lung2_image_crop**"]
    assert [c[2] for c in cells].count("synthetic") == 4 and all(0 <= float(c[4]) <= 1 and c[5] in ("yes", "no") for c in cells)
    text = "\n".join(lines)
    assert re.search(r"^real scans ranked [1-6] and [1-6] of 6$", text, re.M)
    auc = float(re.search(r"real vs synthetic scans: ([0-9.]+)$", text, re.M).group(1))
    assert 0.0 <= auc <= 1.0

    result = json.loads((out / "results.json").read_text())
    assert result["hardware"]["cores"] >= 1 and result["n_audited"] == 6 and result["n_reference"] == 10
    assert sorted(r["scan"] for r in result["rows"] if r["source"] == "real") == ["chest_cta_crop", "lung2_image_crop"]
    assert set(result["predicted_volumes"]) == {"heart", "trachea"}
    assert {"chest_cta_crop", "lung2_image_crop", "reference median"} <= set(result["predicted_volumes"]["heart"])
    assert Path(result["figure"]).name == "chest_cta_crop_heart.png" and Path(result["figure"]).read_bytes()[:4] == b"\x89PNG"
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "image,image_id,split" and len(manifest) == 1 + 16  # no labels, no source column: the truth stays out

    scans = sorted((out / "audit" / "scans").glob("*.json")) + sorted((out / "audit" / "reference_scans").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in scans}
    assert shift.main(argv) == 0  # a rerun reuses every explanation
    assert {p: p.stat().st_mtime_ns for p in scans} == before
    assert np.isclose(json.loads((out / "results.json").read_text())["auc"], result["auc"])

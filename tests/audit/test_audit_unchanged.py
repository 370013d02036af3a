"""An audit of a small model writes the same tables as the code before the settings/method-table/detector seams.

The reference files in ``data/`` were written by this module's :func:`write_reference` run against the
code of main at commit 5ded48a (before issue 22's AuditSettings and detector seam; the method table had
landed: at 4156258, before issue 25's evidence families, the tables were those of 2c0fe1a, before the method
table), with that tree first on ``PYTHONPATH``::

    git archive 5ded48a | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python tests/audit/test_audit_unchanged.py tests/audit/data

Rewritten with the current code (``python tests/audit/test_audit_unchanged.py tests/audit/data``) when issue 25's
``image`` evidence family joined the scan-level score (new ``*_image_anomaly_p`` columns, a new score); the
audit runs with oneDNN off (``torch.backends.mkldnn.flags(enabled=False)``): PyTorch's own kernel gives the same
numbers on AVX2 and AVX-512 CPUs, oneDNN's fp32 sums differ between them by ~1e-7 (measured with the CPU capped at AVX2).
Rewritten again when the scan-level score took its own detector (``--score-detector``, default the robust distance
instead of the per-class Isolation Forests) and the image family the background's voxels inside the body and the
voxels at the input's bounds: new scan-level scores, per-class p-values and worklist; the per-class forest scores,
outliers, shares, Dice and paper analyses equal the previous reference (checked before the rewrite).

The test runs the same audit with the current code and compares every table cell and every summary value
the old code wrote (new summary keys, such as the detector's name, are allowed; prose such as the
worklist's reasons is not compared). A change in any number of the explanation, the aggregation, the
per-class detectors or the scan-level score fails it; a deliberate change of results rewrites the reference
with the command above run on the new code, and says so in its commit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

DATA = Path(__file__).parent / "data"
NAMES = ["background", "liver", "tumour"]


def _phantom(root: Path, n: int = 16) -> Path:
    """``n`` 12^3 scans of 8 mm in a manifest (the last 4 test, the others train): a noisy body with a liver block and a tumour."""
    import nibabel as nib

    rows = ["image,label,split,scanner"]
    g = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"))
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        body = ((g - 6) ** 2).sum(0) < 5**2
        shift = rng.integers(-1, 2, size=3).reshape(3, 1, 1, 1)
        liver = body & (np.abs(g - 6 - shift) < 2 + (i % 3)).all(0)
        tumour = liver & (((g - 6 - shift) ** 2).sum(0) <= 1 + i % 4)
        ct = np.where(body, 0.0, -1000.0) + 20 * rng.standard_normal(body.shape)
        ct[liver] += 200.0
        ct[tumour] += 400.0
        affine = np.diag([8.0, 8.0, 8.0, 1.0])
        nib.save(nib.Nifti1Image(ct.astype(np.float32), affine), root / f"p{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image((liver.astype(np.uint8) + tumour), affine), root / f"p{i:02d}_label.nii.gz")
        rows.append(f"p{i:02d}.nii.gz,p{i:02d}_label.nii.gz,{'train' if i < n - 4 else 'test'},{'A' if i % 2 else 'B'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _model() -> torch.nn.Module:
    """Tangent logits of the intensity (each class nearest its point) plus a seeded 3x3x3 smoothing, so
    attributions spill into neighbouring regions."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.conv = torch.nn.Conv3d(1, 3, 3, padding=1)
            p = torch.tensor([0.0, 0.5, 1.0])
            with torch.no_grad():
                self.conv.weight.copy_(0.05 * torch.rand(self.conv.weight.shape, generator=g))
                self.conv.weight[:, 0, 1, 1, 1] += 2 * p
                self.conv.bias.copy_(-(p**2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    return Net()


def _audit(work: Path, out: Path):
    from agg2exp_lightning.audit import audit

    manifest = _phantom(work)
    # fp32 pinned: "auto" runs bf16 on CPUs with native bf16, and the reference must not depend on the machine
    # PyTorch's own convolution kernel, not oneDNN (whose fp32 sums differ by ~1e-7 between AVX2 and AVX-512 CPUs):
    # the reference then holds to 1e-9 on any CPU CI meets
    with torch.backends.mkldnn.flags(enabled=False):
        return audit(_model(), manifest, method="vg", method_options={"precision": "fp32"}, reference="train", label_map=NAMES,
                     spacing=(8, 8, 8), out=out, accelerator="cpu", n_dependencies=4, contamination=0.2)


def write_reference(folder: Path) -> None:
    """Run the audit and keep its per-scan table and summary in ``folder`` (see the module docstring)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "data"
        work.mkdir()
        _audit(work, Path(tmp) / "out")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "unchanged_per_scan.csv").write_text((Path(tmp) / "out" / "per_scan.csv").read_text())
        (folder / "unchanged_summary.json").write_text((Path(tmp) / "out" / "summary.json").read_text())


#: Summary keys whose text is prose (wording that other issues reword), not a result: their strings are not compared.
PROSE = frozenset({"why", "method", "notes", "detail", "reason", "flag", "outlier", "score", "label", "effect"})


def _same(reference, got, where: str = "summary") -> None:
    """Every value of ``reference`` is in ``got`` and equal (numbers to 1e-9 relative; prose strings skipped);
    extra keys in ``got`` allowed."""
    if where.rsplit(".", 1)[-1].split("[")[0] in PROSE and not isinstance(reference, (int, float)):
        return
    if isinstance(reference, dict):
        assert isinstance(got, dict), where
        for key, value in reference.items():
            assert key in got, f"{where}: {key!r} missing"
            _same(value, got[key], f"{where}.{key}")
    elif isinstance(reference, list):
        assert isinstance(got, list) and len(got) == len(reference), where
        for i, (a, b) in enumerate(zip(reference, got)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(reference, float) and not isinstance(reference, bool):
        assert isinstance(got, (int, float)) and np.isclose(got, reference, rtol=1e-9, atol=1e-12), f"{where}: {got} != {reference}"
    else:
        assert got == reference, f"{where}: {got!r} != {reference!r}"


def test_audit_writes_the_tables_of_the_code_before_the_seams(tmp_path):
    work = tmp_path / "data"
    work.mkdir()
    outputs = _audit(work, tmp_path / "out")
    ref = pd.read_csv(DATA / "unchanged_per_scan.csv")
    got = pd.read_csv(tmp_path / "out" / "per_scan.csv")
    assert list(got.columns) == list(ref.columns) and len(got) == len(ref) == 4
    numeric = ref.select_dtypes("number").columns
    np.testing.assert_allclose(got[numeric].to_numpy(float), ref[numeric].to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)
    other = [c for c in ref.columns if c not in numeric]
    assert got[other].astype(str).equals(ref[other].astype(str))
    summary = json.loads((DATA / "unchanged_summary.json").read_text())
    assert summary["scan_anomaly"].get("n_flagged") is not None  # the reference covers the scan-level score too
    _same(summary, json.loads((tmp_path / "out" / "summary.json").read_text()))
    assert outputs.summary()["anomaly"]["detector"] == "isolation_forest"


if __name__ == "__main__":
    write_reference(Path(sys.argv[1]))

"""Faults the score was never shaped on: acquisition and processing errors outside the generator's list, measured.

Every choice of the scan-level score (detector, tail, features, transforms) was made while looking at the planted
conditions of ``benchmarks/audit_power.py``. This script checks them on faults that are none of those and that no
part of the audit was designed around; each is a pure function of a clean scan's CT (HU) and its masks, applied to
``--n-sources`` clean scans of audit_power's pool (``FAULTS``, each at a strong and a mild strength, both set
once before any measurement):

- ``hu_offset``: every voxel +100 / +40 HU (a calibration drift of the scanner);
- ``motion_ghost``: 70 % (85 %) of the scan plus 30 % (15 %) of itself shifted 5 voxels (20 mm) front to back
  (breathing motion during the acquisition: a double exposure);
- ``short_coverage``: the top 25 % / 12.5 % of the slices missing (a scan that stops below the lung apices);
- ``fov_truncation``: the outer 15 % / 8 % of the field of view on either side set to air (a patient wider than
  the reconstructed field of view);
- ``contrast_phase``: +250 / +100 HU inside the aorta, heart and pulmonary veins (an arterial-phase contrast scan
  in a non-contrast cohort).

The faulty scans are written in the pool's layout under ``<out>/unseen_pool`` and explained once through the model
(``run_checkpoint_audit``, cached in ``<out>/explained_unseen``; the pool's own records come from audit_power's
cache). Per cohort seed: 24 reference scans and 24 clean audited scans are drawn from the pool's clean scans (the
sources of the faulty copies left out of both), every faulty scan is audited beside them, and the audit's own
analysis (:func:`~agg2exp_lightning.analysis.cohort.analyze_cohort`) scores them under each variant of the score
(``VARIANTS``: the default, its ablations and the paper's shares alone). Reported: ROC AUC faulty vs clean, mean
(min) over the seeds, and the share of faulty scans flagged at the default threshold with its Wilson interval.

    python benchmarks/unseen_faults.py --checkpoint runs/demo/checkpoints/best-*.ckpt --out runs/audit_power

(after ``benchmarks/audit_power.py`` has explained its pool into the same ``--out``).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
import audit_power as ap  # noqa: E402  (the pool, its cached records, cohort tables and AUC)

from agg2exp_lightning.utils import atomic_write_text  # noqa: E402
from agg2exp_lightning.utils.hardware import hardware_line  # noqa: E402

log = logging.getLogger("unseen_faults")

#: Air in HU (what the missing slices and the truncated field of view read as).
AIR_HU = -1024.0


def hu_offset(ct: np.ndarray, masks: dict[str, np.ndarray], hu: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every voxel ``+hu``: a calibration drift of the scanner."""
    return ct + hu, masks


def motion_ghost(ct: np.ndarray, masks: dict[str, np.ndarray], weight: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``1 - weight`` of the scan plus ``weight`` of itself shifted 5 voxels front to back (a double exposure)."""
    return (1.0 - weight) * ct + weight * np.roll(ct, 5, axis=1), masks


def short_coverage(ct: np.ndarray, masks: dict[str, np.ndarray], share: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The top ``share`` of the slices missing (RAS: axis 2 runs foot to head)."""
    keep = ct.shape[2] - int(round(share * ct.shape[2]))
    return ct[:, :, :keep], {k: m[:, :, :keep] for k, m in masks.items()}


def fov_truncation(ct: np.ndarray, masks: dict[str, np.ndarray], share: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The outer ``share`` of the field of view on either side (axis 0) set to air."""
    out, edge = ct.copy(), int(round(share * ct.shape[0]))
    out[:edge], out[ct.shape[0] - edge:] = AIR_HU, AIR_HU
    return out, masks


def contrast_phase(ct: np.ndarray, masks: dict[str, np.ndarray], hu: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``+hu`` inside the aorta, heart and pulmonary veins (an arterial-phase contrast scan)."""
    vessels = np.zeros(ct.shape, dtype=bool)
    for name in ("aorta", "heart", "pulmonary_vein"):
        if name in masks:
            vessels |= masks[name] > 0
    return np.where(vessels, ct + hu, ct), masks


#: Each fault at two strengths, set once before any measurement: name -> (function, strength).
FAULTS = {
    "hu_offset +100 HU": (hu_offset, 100.0), "hu_offset +40 HU": (hu_offset, 40.0),
    "motion_ghost 30 %": (motion_ghost, 0.3), "motion_ghost 15 %": (motion_ghost, 0.15),
    "short_coverage 25 %": (short_coverage, 0.25), "short_coverage 12 %": (short_coverage, 0.125),
    "fov_truncation 15 %": (fov_truncation, 0.15), "fov_truncation 8 %": (fov_truncation, 0.08),
    "contrast_phase +250 HU": (contrast_phase, 250.0), "contrast_phase +100 HU": (contrast_phase, 100.0),
}


def fault_id(scan_id: str, fault: str) -> str:
    """The faulty copy's scan id: ``s0005_hu_offset_100``."""
    name, strength = FAULTS[fault][0].__name__, FAULTS[fault][1]
    return f"{scan_id}_{name}_{strength:g}".replace(".", "p")


#: The score's variants: the default and the ablations of docs/auditing.md, as analyze_cohort options.
VARIANTS = {
    "default (robust distance, exponential tail)": {},
    "robust distance, conformal tail": {"score_tail": "conformal"},
    "Isolation Forests, conformal (the previous default)": {"score_detector": "isolation_forest", "score_tail": "conformal"},
    "shares alone (the paper's evidence)": {"evidence": "shares"},
}


def write_faulty_pool(pool: Path, sources: list[str], root: Path) -> dict[str, str]:
    """Each fault applied to each source subject, written as ``<root>/<id>_<fault>`` with a ``meta.csv``
    (split ``test``); returns ``scan id -> fault``. Subjects already written are kept (a rerun reuses them)."""
    import nibabel as nib

    meta = ap.pool_meta(pool).set_index("image_id")
    root.mkdir(parents=True, exist_ok=True)
    truth, rows = {}, []
    for sid in sources:
        for name, (fault, strength) in FAULTS.items():
            new = fault_id(sid, name)
            truth[new] = name
            row = meta.loc[sid].to_dict()
            row.update(image_id=new, split="test", planted_condition="none", degraded="0")
            rows.append(row)
            folder = root / new
            if (folder / "ct.nii.gz").is_file():
                continue
            img = nib.load(pool / sid / "ct.nii.gz")
            seg_files = sorted((pool / sid / "segmentations").glob("*.nii.gz"))
            masks = {f.name[: -len(".nii.gz")]: np.asarray(nib.load(f).dataobj) for f in seg_files}
            ct, masks = fault(np.asarray(img.dataobj, dtype=np.float32), masks, strength)
            tmp = root / f".{new}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "segmentations").mkdir(parents=True)
            nib.save(nib.Nifti1Image(np.clip(np.rint(ct), -32768, 32767).astype(np.int16), img.affine), tmp / "ct.nii.gz")
            for k, m in masks.items():
                nib.save(nib.Nifti1Image(m.astype(np.uint8), img.affine), tmp / "segmentations" / f"{k}.nii.gz")
            tmp.rename(folder)
    columns = ["image_id", *meta.columns]
    lines = [";".join(columns)] + [";".join(str(r.get(c, "")) for c in columns) for r in rows]
    atomic_write_text(root / "meta.csv", "\n".join(lines) + "\n")
    return truth


def main(argv: list[str] | None = None) -> int:
    from agg2exp_lightning.analysis.cohort import analyze_cohort
    from agg2exp_lightning.analysis.proportions import format_rate
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit
    from agg2exp_lightning.labels import THORAX_CLASSES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="the checkpoint audit_power explained its pool with (a glob is expanded)")
    p.add_argument("--out", type=Path, default=ap.ROOT / "runs" / "audit_power", help="audit_power's --out folder")
    p.add_argument("--n-sources", type=int, default=8, help="clean pool scans each fault is applied to (default %(default)s)")
    p.add_argument("--n-reference", type=int, default=24)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--method", default="vanilla_gradient")
    p.add_argument("--results", type=Path, default=ap.ROOT / "benchmarks" / "results" / "unseen_faults_cpu.md")
    args = p.parse_args(argv)
    checkpoint = ap.start_run(args.checkpoint)
    if checkpoint is None:
        return 2
    pool_dir = args.out / "pool"
    if not (pool_dir / "meta.csv").is_file():
        print(f"--out {args.out}: no audit_power pool there (run benchmarks/audit_power.py first)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    pool, records = ap.load_pool(pool_dir, args.out)
    clean_ids = sorted(pool.loc[(pool["planted_condition"] == "none") & (pool["degraded"].astype(str) != "1"), "patient"])
    sources = sorted(np.random.default_rng(0).choice(clean_ids, size=args.n_sources, replace=False).tolist())
    truth = write_faulty_pool(pool_dir, sources, args.out / "unseen_pool")
    run_checkpoint_audit(checkpoint, args.out / "explained_unseen", data=str(args.out / "unseen_pool"), split="test",
                         method=args.method, targets=None, reference_split=None, accelerator="cpu")
    t_explain = time.perf_counter()
    faulty, faulty_records = ap.load_pool(args.out / "unseen_pool", args.out, folder_name="explained_unseen", splits=("test",))
    records = {**records, **faulty_records}
    frame = pd.concat([pool, faulty], ignore_index=True)
    fault_of = frame["patient"].map(truth).fillna("none").to_numpy()
    candidates = frame.index[frame["patient"].isin(set(clean_ids) - set(sources))].to_numpy()
    bad = frame.index[fault_of != "none"].to_numpy()
    classes = list(THORAX_CLASSES)
    auc: dict[str, dict[str, list[float]]] = {v: {f: [] for f in FAULTS} for v in VARIANTS}
    flagged: dict[str, dict[str, list[int]]] = {v: {f: [0, 0] for f in FAULTS} for v in VARIANTS}
    clean_flags = {v: [0, 0] for v in VARIANTS}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        reference = rng.choice(candidates, size=min(args.n_reference, len(candidates) - 2), replace=False)
        audited = np.r_[np.setdiff1d(candidates, reference), bad]
        ref_table, aud_table = ap.cohort_table(frame, reference, classes, records), ap.cohort_table(frame, audited, classes, records)
        kind = fault_of[audited]
        for variant, options in VARIANTS.items():
            scan = analyze_cohort(aud_table, ref_table, n_bootstrap=0, seed=seed, **options).scan
            clean = kind == "none"
            clean_flags[variant][0] += int(scan.flagged[clean].sum())
            clean_flags[variant][1] += int(clean.sum())
            for f in FAULTS:
                hit = kind == f
                auc[variant][f].append(ap.roc_auc(scan.score[hit], scan.score[clean]))
                flagged[variant][f][0] += int(scan.flagged[hit].sum())
                flagged[variant][f][1] += int(hit.sum())
        log.info("seed %d: %s", seed, json.dumps({v: {f: round(a[f][-1], 3) for f in FAULTS} for v, a in auc.items()}))
    t_end = time.perf_counter()
    n_clean = int(len(candidates) - min(args.n_reference, len(candidates) - 2))
    lines = [hardware_line(), "",
             f"`python benchmarks/unseen_faults.py --checkpoint {checkpoint} --out {args.out}`: {len(sources)} clean pool scans "
             f"per fault, {args.seeds} cohorts of {args.n_reference} reference + {n_clean} clean audited scans (the sources left out); "
             f"method {args.method}. ROC AUC faulty vs clean, mean (min) over the cohorts", "",
             "| fault | " + " | ".join(VARIANTS) + " | flagged at the default threshold (default score) |",
             "|---|" + "---:|" * (len(VARIANTS) + 1)]
    first = next(iter(VARIANTS))
    for f in FAULTS:
        cells = [f"{np.mean(auc[v][f]):.3f} ({np.min(auc[v][f]):.3f})" for v in VARIANTS]
        lines.append(f"| {f} | " + " | ".join(cells) + f" | {format_rate(*flagged[first][f])} |")
    lines.append("| clean scans flagged | " + " | ".join(f"{k} of {n}" for k, n in clean_flags.values()) + " | |")
    lines += ["", f"seconds: writing and explaining the faulty scans {t_explain - t0:.0f}, cohort analyses {t_end - t_explain:.0f}"]
    atomic_write_text(args.results, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

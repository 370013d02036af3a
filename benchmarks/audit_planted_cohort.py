"""Known truth through a trained model: audit a synthetic cohort with planted conditions and a degraded scanner.

Generates a fresh synthetic cohort (a seed the model never saw) in which some subjects carry a
planted condition (default: pleural effusion and a metal artefact) and one scanner's scans are made
noisier, audits it with a trained checkpoint through ``audit.py``'s own function (Isolation Forests
fitted on the audited scans), and prints how well the anomaly scores single out the planted scans
(ROC AUC per class and over classes) and the bias tests of every metadata column (the scanner's included).

    python benchmarks/audit_planted_cohort.py --checkpoint runs/demo/checkpoints/best-*.ckpt

The planted conditions are visible only to a model that segments the structures they touch: lung
conditions need the lobes, ``mirrored_heart`` needs the heart. Numbers depend on the checkpoint.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
from pathlib import Path

from agg2exp_lightning.utils.hardware import hardware_line

ROOT = Path(__file__).resolve().parents[1]


def _parse_condition(text: str) -> tuple[str, float]:
    name, _, fraction = text.partition("=")
    return name, float(fraction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint (a glob is expanded)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "audit_planted"))
    parser.add_argument("--n-subjects", type=int, default=40)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--condition", action="append", type=_parse_condition, metavar="NAME=FRACTION",
                        help="planted condition (repeatable; default pleural_effusion=0.15 metal_artefact=0.15)")
    parser.add_argument("--degraded-scanner", default="Aquilion ONE")
    parser.add_argument("--split", default="train", help="split of the new cohort to audit (default: train, the largest)")
    parser.add_argument("--method", default="vanilla_gradient")
    args = parser.parse_args()
    print(hardware_line(), flush=True)
    os.environ.setdefault("WANDB_MODE", "disabled")

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from agg2exp_lightning.audit.cli import main as audit_main
    from agg2exp_lightning.data.synthetic import generate_cohort

    matches = sorted(glob.glob(args.checkpoint))
    if len(matches) != 1:
        raise SystemExit(f"--checkpoint {args.checkpoint!r}: expected exactly one file, found {matches}")
    conditions = dict(args.condition or [("pleural_effusion", 0.15), ("metal_artefact", 0.15)])
    out = Path(args.out)
    cohort = out / "cohort"
    t0 = time.perf_counter()
    generate_cohort(cohort, args.n_subjects, seed=args.seed, conditions=conditions,
                    degraded_scanner=args.degraded_scanner, progress=True)
    t1 = time.perf_counter()
    rc = audit_main(["--checkpoint", matches[0], "--data", str(cohort), "--split", args.split,
                     "--method", args.method, "--out", str(out / "audit"), "--overwrite"])
    t2 = time.perf_counter()
    if rc != 0:
        raise SystemExit(f"audit failed with exit code {rc}")

    meta = pd.read_csv(cohort / "meta.csv", sep=";")
    scans = pd.read_csv(out / "audit" / "per_scan.csv")
    id_col = "patient" if "patient" in scans.columns else scans.columns[0]
    missing = ["image_id", *[c for c in meta.columns if c not in scans.columns and c != "image_id"]]
    table = scans.merge(meta[missing], left_on=id_col, right_on="image_id", how="left")
    score_cols = [c for c in table.columns if c.endswith("_anomaly_score")]
    scores = table[score_cols].astype(float)
    # Each class's forest has its own scale: rank-normalise per class, then take the maximum over classes.
    ranks = scores.rank(pct=True)
    print(f"\ncohort: {args.n_subjects} subjects (seed {args.seed}), audited split {args.split!r}: {len(table)} scans; "
          f"generation {t1 - t0:.0f} s, audit {t2 - t1:.0f} s ({args.method})")
    for name in conditions:
        planted = (table["planted_condition"] == name).to_numpy()
        if planted.sum() == 0 or planted.all():
            print(f"{name}: {int(planted.sum())} planted scans in the audited split; AUC undefined")
            continue
        per_class = {c[: -len("_anomaly_score")]: roc_auc_score(planted, scores[c].fillna(scores[c].min()))
                     for c in score_cols if scores[c].notna().sum() > 1}
        best = sorted(per_class.items(), key=lambda kv: -kv[1])[:3]
        overall = roc_auc_score(planted, ranks.max(axis=1).fillna(0))
        ids = ", ".join(table.loc[planted, "image_id"].astype(str))
        print(f"{name}: {int(planted.sum())} planted ({ids}); AUC of the max rank-normalised score over classes "
              f"{overall:.2f}; best classes " + ", ".join(f"{c} {a:.2f}" for c, a in best))
    degraded = (table["degraded"].astype(str).str.lower().isin(["1", "true", "yes"])).to_numpy()
    if 0 < degraded.sum() < len(degraded):
        print(f"degraded scanner {args.degraded_scanner!r}: {int(degraded.sum())} scans; AUC of the max rank-normalised "
              f"score {roc_auc_score(degraded, ranks.max(axis=1).fillna(0)):.2f}")
    summary = json.loads((out / "audit" / "summary.json").read_text())
    tests = [t for t in summary.get("bias_tests", []) if t["group"] == "any_class"]
    for t in sorted(tests, key=lambda t: (t["p"] if t["p"] is not None else 2.0)):
        p, q = (float("nan") if v is None else v for v in (t["p"], t["q"]))
        print(f"bias test, outliers of any class vs inliers, {t['column']}: {t['test']} p={p:.3g} q={q:.3g} "
              f"({t['n_outliers']} outliers / {t['n_inliers']} inliers; {t['detail']})")
    print(f"\nreport: {out / 'audit' / 'report.html'}")


if __name__ == "__main__":
    main()

"""Each evidence family alone, and other ways to combine them, on audit_power's cached records.

Usage (after ``benchmarks/audit_power.py`` has explained its pool into ``--out``):
    python benchmarks/family_combinations.py --out runs/audit_power [--score-detector robust_distance]

Exploratory, not part of the audit: it asks whether a fault the scan-level score misses is missing from every
family or lost in how the families are combined. For each cohort of audit_power (same draws: seeds 0-4, 24
reference + 60 audited scans) the audit's own analysis runs once with every family
(:func:`~agg2exp_lightning.analysis.cohort.analyze_cohort`), and its per-class conformal p-values (audited scans,
and reference scans leaving themselves out) are recombined:

- ``fisher, every family``: Fisher over every family's per-class p-values (the audit's score);
- ``<family> alone``: Fisher over that family's per-class p-values;
- ``largest standardised family``: per family, Fisher's statistic standardised by the reference scans' mean and
  standard deviation; the scan's score is the largest (a fault seen in one family is not diluted by the others);
- ``fisher over family p``: per family, Fisher's statistic turned into a conformal p-value against the reference
  scans' (each compared with the others), then Fisher over the families.

ROC AUC is rank-based, so the final calibration (monotone) does not change it. Printed (and written to
``--results``): mean (min) ROC AUC over the seeds per planted condition.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import audit_power as ap  # noqa: E402  (the benchmark's pool loading, cohort draws and AUC)

from agg2exp_lightning.utils import atomic_write_text  # noqa: E402
from agg2exp_lightning.utils.hardware import hardware_line  # noqa: E402

CONDITIONS = ("metal_artefact", "mirrored_heart", "missing_lobe", "pleural_effusion", "degraded_scanner")


def combinations(families: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Scores of the audited scans per combination, from ``family -> (audited [N, A] p, reference [M, A] p)``."""
    from agg2exp_lightning.analysis.anomaly import conformal_p, fisher_combination

    out = {"fisher, every family": fisher_combination(np.concatenate([a for a, _ in families.values()], axis=1))}
    z, fam_p = [], []
    for name, (aud, ref) in families.items():
        s_aud, s_ref = fisher_combination(aud), fisher_combination(ref)
        out[f"{name} alone"] = s_aud
        mu, sd = np.nanmean(s_ref), np.nanstd(s_ref)
        z.append((s_aud - mu) / (sd if sd > 0 else 1.0))
        fam_p.append(conformal_p(s_aud, s_ref))
    out["largest standardised family"] = np.nanmax(np.stack(z), axis=0)
    out["fisher over family p"] = fisher_combination(np.stack(fam_p, axis=1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ap.ROOT / "runs" / "audit_power", help="audit_power's --out folder")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--score-detector", default="robust_distance", help="detector of the scan-level score (default %(default)s)")
    p.add_argument("--results", type=Path, default=None,
                   help="results file (default benchmarks/results/family_combinations_<score detector>_cpu.md)")
    args = p.parse_args(argv)
    from agg2exp_lightning.labels import THORAX_CLASSES

    pool, records = ap.load_pool(args.out / "pool", args.out)
    aucs: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        _, analysis, truth = ap.audit_cohort(pool, seed, 24, 60, list(THORAX_CLASSES), records=records,
                                           score_detector=args.score_detector)
        scan = analysis.scan
        families = {"shares": (scan.class_p, scan.reference_class_p),
                    **{f: (scan.family_p[f], scan.reference_family_p[f]) for f in scan.family_p}}
        cond = truth["planted_condition"].to_numpy()
        deg = truth["degraded"].astype(str).to_numpy() == "1"
        clean = (cond == "none") & ~deg
        for name, score in combinations(families).items():
            for c in CONDITIONS:
                hit = deg & (cond == "none") if c == "degraded_scanner" else cond == c
                aucs.setdefault(name, {}).setdefault(c, []).append(ap.roc_auc(score[hit], score[clean]))
        print(f"seed {seed} done", flush=True)
    lines = [hardware_line(), "", f"`python benchmarks/family_combinations.py --out {args.out} --score-detector {args.score_detector}`: ROC AUC "
             f"mean (min) over {args.seeds} cohorts of audit_power", "",
             "| score | " + " | ".join(CONDITIONS) + " |", "|---|" + "---:|" * len(CONDITIONS)]
    for name, per in aucs.items():
        lines.append(f"| {name} | " + " | ".join(f"{np.mean(per[c]):.3f} ({np.min(per[c]):.3f})" for c in CONDITIONS) + " |")
    text = "\n".join(lines) + "\n"
    out = args.results or Path(__file__).parent / "results" / f"family_combinations_{args.score_detector}_cpu.md"
    atomic_write_text(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

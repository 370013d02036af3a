"""Two variants of the scan-level score tried on audit_power's cached records, beside the conformal baseline.

Usage (after ``benchmarks/audit_power.py`` has explained its pool into ``--out``):
    python benchmarks/score_variants.py --out runs/audit_power

Exploratory, not part of the audit: it asks whether the two planted faults the scan-level score misses
(metal artefact, missing lobe) are lost in how the score is built or are absent from the explanations.
Each variant is written out here (per-class cross-fitted Isolation Forests as in
:func:`agg2exp_lightning.analysis.anomaly.scan_anomaly_scores`, 5 folds, Fisher's combination, conformal
calibration of the combined score), so the features and the per-class evidence can change:

- ``conformal / mass``: per-class cross-conformal p-values on the mass shares (the audit's design);
- ``gaussian / mass``: per-class p = Gaussian tail of the class's forest score, z-scored against the
  reference scans' cross-fitted scores (no saturation at ``1 / (M + 1)``; audited scans average the
  folds' z);
- ``conformal / mass+mean`` and ``gaussian / mass+mean``: forests on the mass shares and the mean
  |attribution| per region together.

Same cohorts as audit_power (seeds 0-4, 24 reference + 60 audited); forests seeded 0 here, so the
baseline differs a little from the audit's own numbers. Absent regions and classes count as share 0
(the audit treats an absent class as most anomalous; the benchmark's pool has none). Prints mean (min) ROC AUC per condition and the
clean scans flagged at 0.05.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import chi2, norm
from sklearn.ensemble import IsolationForest

sys.path.insert(0, str(Path(__file__).parent))
import audit_power as ap  # noqa: E402  (the benchmark's pool loading, cohort draws and AUC)

from agg2exp_lightning.utils.hardware import hardware_line

CONDITIONS = ("metal_artefact", "mirrored_heart", "missing_lobe", "pleural_effusion", "degraded_scanner")


def fisher(p: np.ndarray) -> np.ndarray:
    """-log10 of Fisher's combined p over each row."""
    p = np.clip(p, 1e-300, 1.0)
    return -chi2.logsf(-2 * np.log(p).sum(axis=1), 2 * p.shape[1]) / np.log(10)


def class_evidence(ref: np.ndarray, aud: np.ndarray, evidence: str, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class p-values of the reference scans (leave one out) and of the audited scans."""
    m, n, k = len(ref), len(aud), int(folds.max()) + 1
    rx, ax = np.nan_to_num(ref), np.nan_to_num(aud)
    oof, aud_s, counts = np.empty(m), np.empty((k, n)), np.zeros(n)
    for f in range(k):
        forest = IsolationForest(random_state=0).fit(rx[folds != f])
        oof[folds == f] = -forest.decision_function(rx[folds == f])
        aud_s[f] = -forest.decision_function(ax)
        counts += (oof[folds == f][None, :] >= aud_s[f][:, None]).sum(axis=1)
    if evidence == "conformal":
        ref_p = np.array([(1 + (np.delete(oof, j) >= oof[j]).sum()) / m for j in range(m)])
        return ref_p, (1 + counts) / (m + 1)
    ref_p = np.array([norm.sf((oof[j] - np.delete(oof, j).mean()) / np.delete(oof, j).std(ddof=1)) for j in range(m)])
    z = ((aud_s - oof.mean()) / oof.std(ddof=1)).mean(axis=0)
    return ref_p, norm.sf(z)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ap.ROOT / "runs" / "audit_power", help="audit_power's --out folder")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args(argv)
    print(hardware_line(), flush=True)
    from agg2exp_lightning.analysis.tables import parse_explanation_table
    from agg2exp_lightning.labels import THORAX_CLASSES

    pool, _ = ap.load_pool(args.out / "pool", args.out)
    variants = [(e, f) for f in ("mass", "mass+mean") for e in ("conformal", "gaussian")]
    print("| evidence / features | " + " | ".join(CONDITIONS) + " | clean flagged |")
    print("|---|" + "---:|" * (len(CONDITIONS) + 1))
    for evidence, feats in variants:
        aucs, fpr = {c: [] for c in CONDITIONS}, []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)  # the draws of audit_power.audit_cohort
            clean = pool.index[(pool["planted_condition"] == "none") & (pool["degraded"].astype(str) != "1")].to_numpy()
            reference = rng.choice(clean, size=24, replace=False)
            audited = rng.choice(np.setdiff1d(pool.index.to_numpy(), reference), size=60, replace=False)
            tabs = [parse_explanation_table(pool.loc[ix].drop(columns=list(ap.TRUTH_COLUMNS)), list(THORAX_CLASSES))
                    for ix in (reference, audited)]
            x = [t.mass if feats == "mass" else np.concatenate([t.mass, t.mean], axis=2) for t in tabs]
            folds = np.random.default_rng(0).permutation(np.arange(len(reference)) % 5)
            ref_p, aud_p = zip(*(class_evidence(x[0][:, a], x[1][:, a], evidence, folds) for a in range(x[0].shape[1])))
            ref_score, score = fisher(np.array(ref_p).T), fisher(np.array(aud_p).T)
            p_value = (1 + (ref_score[None, :] >= score[:, None]).sum(axis=1)) / (len(ref_score) + 1)
            cond = pool.loc[audited, "planted_condition"].to_numpy()
            deg = pool.loc[audited, "degraded"].astype(str).to_numpy() == "1"
            is_clean = (cond == "none") & ~deg
            fpr.append(float((p_value[is_clean] <= 0.05).mean()))
            for c in CONDITIONS:
                hit = deg & (cond == "none") if c == "degraded_scanner" else cond == c
                aucs[c].append(ap.roc_auc(score[hit], score[is_clean]))
        cells = [f"{np.mean(aucs[c]):.3f} ({np.min(aucs[c]):.3f})" for c in CONDITIONS]
        print(f"| {evidence} / {feats} | " + " | ".join(cells) + f" | {np.mean(fpr):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

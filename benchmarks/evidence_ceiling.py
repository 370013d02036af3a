"""Is a planted condition in the recorded evidence at all? The best single feature, chosen with hindsight, against chance.

Usage (after ``benchmarks/audit_power.py`` has explained its pool into ``--out``):
    python benchmarks/evidence_ceiling.py --out runs/audit_power [--shuffles 1000]

Exploratory, not part of the audit. The scan-level score can only find what its features carry. For each planted
condition (and the degraded scanner) this takes every feature the audit records for a scan, the shares
``e_{b->a}`` (class x region) and every evidence family's features (class x feature, as the detectors see them,
:func:`~agg2exp_lightning.analysis.evidence.forest_features`), and measures, over the whole explained pool, how well
each one alone separates the condition's scans from the clean ones (ROC AUC, either direction:
``max(AUC, 1 - AUC)``). The best of several hundred features is chosen **with hindsight**, so it is optimistic;
its yardstick is chance: the same maximum with the condition labels shuffled among the same scans
(``--shuffles`` times; its 95th percentile). A condition whose hindsight-best feature is no better than chance's
is not in these features: no detector or combination of them, however tuned, can be expected to find it.

Beside it, with labels: the best per-class Dice of the model (what an audit with ground truth sees).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import audit_power as ap  # noqa: E402  (the benchmark's pool loading)

from agg2exp_lightning.utils import atomic_write_text  # noqa: E402
from agg2exp_lightning.utils.hardware import hardware_line  # noqa: E402


def feature_table(records: list[dict]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``[N, K]`` every recorded feature of each scan (NaN where absent), the ``K`` names, and ``[N, T]`` Dice."""
    from agg2exp_lightning.analysis.evidence import FAMILIES, family_matrix, forest_features

    first = records[0]
    classes, regions = first["classes"], first["regions"]
    names = [f"share of {c} in {r}" for c in classes for r in regions]
    for fam, feats in FAMILIES.items():
        names += [f"{fam}: {f.words.format(cls=c)}" for c in classes for f in feats]
    rows, dice = [], []
    for rec in records:
        if rec["classes"] != classes or rec["regions"] != regions:
            raise SystemExit(f"record {rec['id']}: classes or regions differ from {first['id']}'s")
        mass = np.asarray([[np.nan if v is None else v for v in row] for row in rec["mass"]], dtype=float)
        parts = [mass.reshape(-1)]
        for fam in FAMILIES:
            values = (rec.get("evidence") or {}).get(fam)
            parts.append(forest_features(family_matrix(values, fam, len(classes)), fam).reshape(-1))
        rows.append(np.concatenate(parts))
        dice.append([np.nan if v is None else v for v in (rec.get("dice") or [None] * len(classes))])
    return np.asarray(rows, dtype=float), names, np.asarray(dice, dtype=float)


def two_sided_auc(x: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """``[K]`` ``max(AUC, 1 - AUC)`` of each column of ``x`` ``[N, K]`` for ``positive`` ``[N]`` (columns with NaN: NaN)."""
    from scipy.stats import rankdata

    ranks = rankdata(x, axis=0)  # ties share their mean rank
    n1, n0 = int(positive.sum()), int((~positive).sum())
    auc = (ranks[positive].sum(axis=0) - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    auc = np.where(np.isnan(x).any(axis=0), np.nan, auc)
    return np.maximum(auc, 1.0 - auc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ap.ROOT / "runs" / "audit_power", help="audit_power's --out folder")
    p.add_argument("--shuffles", type=int, default=1000, help="label shuffles of the chance maximum (default %(default)s)")
    p.add_argument("--results", type=Path, default=ap.ROOT / "benchmarks" / "results" / "evidence_ceiling_cpu.md")
    args = p.parse_args(argv)
    pool, records = ap.load_pool(args.out / "pool", args.out)
    ids = [i for i in pool["patient"] if i in records]
    pool = pool.set_index("patient").loc[ids]
    x, names, dice = feature_table([records[i] for i in ids])
    usable = ~np.isnan(x).any(axis=0)  # a feature absent for some scan (a class not predicted) is left out
    x, names = x[:, usable], [n for n, u in zip(names, usable) if u]
    cond = pool["planted_condition"].to_numpy()
    degraded = pool["degraded"].astype(str).to_numpy() == "1"
    clean = (cond == "none") & ~degraded
    rng = np.random.default_rng(0)
    classes = records[ids[0]]["classes"]
    lines = [hardware_line(), "",
             f"`python benchmarks/evidence_ceiling.py --out {args.out} --shuffles {args.shuffles}`: {len(ids)} explained pool scans, "
             f"{x.shape[1]} features recorded for every scan (shares and evidence families); ROC AUC max(AUC, 1 - AUC) of "
             "the condition's scans vs the clean ones", "",
             "| condition | scans (clean) | hindsight-best single feature | its AUC | chance: best of shuffled labels, 95th pct (median) | best Dice AUC (labels) |",
             "|---|---:|---|---:|---:|---:|"]
    for name in sorted(set(cond) - {"none"}) + ["degraded_scanner"]:
        hit = (degraded & (cond == "none")) if name == "degraded_scanner" else cond == name
        keep = hit | clean
        xs, pos = x[keep], hit[keep]
        auc = two_sided_auc(xs, pos)
        best = int(np.nanargmax(auc))
        chance = [np.nanmax(two_sided_auc(xs, rng.permutation(pos))) for _ in range(args.shuffles)]
        d = dice[keep]
        dice_ok = ~np.isnan(d).any(axis=0)
        dice_auc = two_sided_auc(d[:, dice_ok], pos) if dice_ok.any() else np.array([np.nan])
        j = int(np.nanargmax(dice_auc)) if np.isfinite(dice_auc).any() else None
        dice_text = f"{dice_auc[j]:.3f} ({np.asarray(classes)[dice_ok][j]})" if j is not None else "-"
        lines.append(f"| {name} | {int(hit.sum())} ({int(clean.sum())}) | {names[best]} | {auc[best]:.3f} | "
                     f"{np.percentile(chance, 95):.3f} ({np.median(chance):.3f}) | {dice_text} |")
        print(lines[-1], flush=True)
    atomic_write_text(args.results, "\n".join(lines) + "\n")
    print(f"written: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

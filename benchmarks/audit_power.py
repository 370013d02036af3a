"""Does the audit find what is wrong? Planted faults and a degraded scanner through a trained model, measured.

A pool of synthetic subjects (a seed the model never saw) is generated with every planted condition of
the generator in a share of the subjects (``--condition-fraction``) and one scanner degraded
(``--degraded-scanner``). Every pool scan is explained once through the model (``run_checkpoint_audit``
per split of the pool; vanilla gradient and every class by default, as ``agg2exp-audit`` explains; the
per-scan records are cached in ``--out``, so a rerun or another cohort seed reuses them). Then, for each
cohort seed, a reference set of clean scans (no condition, not from the degraded scanner) and a separate
audited cohort of at least 60 scans are drawn from the pool and audited with
:func:`~agg2exp_lightning.analysis.cohort.analyze_cohort` (the audit's own analysis: per-class forests
fitted on the reference, the calibrated scan-level score, the bias tests). Reported:

- per planted condition, the ROC AUC of the scan-level score (planted scans vs clean scans of the
  cohort) and the sensitivity of the scan-level flag at the default contamination;
- the false-positive rate of the flag on clean scans (and that of the paper's "outlier for any class");
  every rate with its Wilson 95 % interval (:func:`~agg2exp_lightning.analysis.proportions.format_rate`);
- the bias q-value of the degraded scanner (``scanner_model`` column, rank test of the scan-level score;
  Benjamini-Hochberg over the audit's score tests, every metadata column) per seed;
- the false-alarm rate of the bias tests under the null: the metadata of the first cohort shuffled
  across its scans (``--permutations`` times); an alarm is any q < 0.05 in a family (the score tests;
  also the paper's outlier-proportion tests, either family, and both pooled into one).

The truth columns of the generator (``planted_condition``, ``degraded``, ``pathology``,
``pathology_location``) are kept out of the audit's metadata; they are only used for scoring.

    python benchmarks/audit_power.py --checkpoint runs/demo/checkpoints/best-*.ckpt --out runs/audit_power

Tiny settings to try the script: ``--n-pool 24 --n-reference 10 --n-audited 12 --cohort-seeds 2
--permutations 5 --targets heart trachea``.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agg2exp_lightning.analysis.proportions import format_rate
from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line, hardware_summary

ROOT = Path(__file__).resolve().parents[1]
#: Generator columns that hold the truth: used for scoring, never given to the audit.
TRUTH_COLUMNS = ("planted_condition", "degraded", "pathology", "pathology_location")
#: Columns that identify the degraded scanner (confounded by design: one model, one maker, one institute).
SCANNER_COLUMNS = ("scanner_model", "manufacturer", "institute")

log = logging.getLogger("audit_power")


def pool_meta(pool: Path) -> pd.DataFrame:
    """The pool's ``meta.csv`` (generator layout: ``;``-separated, every column as text)."""
    return pd.read_csv(pool / "meta.csv", sep=";", encoding="utf-8-sig", dtype=str, keep_default_na=False)


def explain_pool(checkpoint: str, pool: Path, out: Path, *, method: str, targets: list[str] | None) -> None:
    """Explain every pool scan once (cached per split in ``out/explained/<split>``; a rerun reuses them)."""
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit

    meta = pool_meta(pool)
    for split in ("test", "val", "train"):  # small splits first: a partial run still covers the pool evenly
        n = int((meta["split"] == split).sum())
        if not n:
            continue
        t0 = time.perf_counter()
        run_checkpoint_audit(checkpoint, out / "explained" / split, data=str(pool), split=split, method=method, targets=targets,
                             reference_split=None, accelerator="cpu")
        log.info("split %s: %d scans explained or reused in %.0f s", split, n, time.perf_counter() - t0)


def explain_training(checkpoint: str, data: Path, out: Path, *, method: str, targets: list[str] | None) -> None:
    """Explain the model's own training split once (cached in ``out/explained_training``): the training-split reference."""
    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit

    run_checkpoint_audit(checkpoint, out / "explained_training", data=str(data), split="train", method=method, targets=targets,
                         reference_split=None, accelerator="cpu")


def load_pool(pool: Path, out: Path, folder_name: str = "explained",
              splits: tuple[str, ...] = ("test", "val", "train")) -> tuple[pd.DataFrame, dict]:
    """Every pool scan explained so far (records in ``out/explained/<split>/scans``) with its metadata, one frame,
    and the records themselves (with the evidence families) by scan id. (Not in ``frame.attrs``: pandas deep-copies
    ``attrs`` on every operation, which made each cohort's analysis take minutes.)"""
    from agg2exp_lightning.audit.scan_records import load_records, records_to_frame

    meta = pool_meta(pool)
    frames, records = [], {}
    for split in splits:
        ids = meta.loc[meta["split"] == split, "image_id"].tolist()
        folder = out / folder_name / split if folder_name == "explained" else out / folder_name
        if not ids or not (folder / "scans").is_dir():
            continue
        done, failed = load_records(folder / "scans", ids)
        for sid, err in failed.items():
            log.warning("pool scan %s failed: %s", sid, err)
        if done:
            frames.append(records_to_frame(done))
            records.update({rec["id"]: rec for rec in done})
    if not frames:
        raise SystemExit(f"no explained scan under {out / folder_name}")
    frame = pd.concat(frames, ignore_index=True)
    keep = [c for c in meta.columns if c not in ("split",)]
    frame = frame.merge(meta[keep], left_on="patient", right_on="image_id", how="left").drop(columns=["image_id"])
    return frame, records


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of scores of positive vs negative scans (sklearn on ranks: NaN lowest, ``+inf`` highest)."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    s = np.concatenate([positive, negative]).astype(float)
    s = rankdata(np.where(np.isnan(s), -np.inf, s))  # ranks: ties share one, inf and -inf order like numbers
    return float(roc_auc_score(np.r_[np.ones(len(positive)), np.zeros(len(negative))], s))


def cohort_table(frame: pd.DataFrame, rows: np.ndarray, classes: list[str], records: dict) -> object:
    """The explanation table of ``frame.loc[rows]`` (truth columns dropped) with its records' evidence families."""
    from agg2exp_lightning.analysis.tables import parse_explanation_table
    from agg2exp_lightning.audit.scan_records import with_record_evidence

    part = frame.loc[rows].drop(columns=[c for c in TRUTH_COLUMNS if c in frame.columns])
    return with_record_evidence(parse_explanation_table(part, classes), records)


def audit_cohort(pool: pd.DataFrame, seed: int, n_reference: int, n_audited: int, classes: list[str], *,
                 records: dict | None = None, evidence: str | None = None,
                 training: tuple[pd.DataFrame, dict] | None = None, detector: str | None = None,
                 score_detector: str | None = None, score_tail: str | None = None) -> tuple[dict, object, pd.DataFrame]:
    """Draw one reference set and one audited cohort from the explained pool and audit it; with ``training`` (the
    model's own training scans, explained), also audit the same cohort against ``n_reference`` of those."""
    from agg2exp_lightning.analysis.cohort import analyze_cohort

    rng = np.random.default_rng(seed)
    clean = pool.index[(pool["planted_condition"] == "none") & (pool["degraded"].astype(str) != "1")].to_numpy()
    reference = rng.choice(clean, size=min(n_reference, len(clean)), replace=False)
    rest = np.setdiff1d(pool.index.to_numpy(), reference)
    audited = rng.choice(rest, size=min(n_audited, len(rest)), replace=False)
    truth = pool.loc[audited, ["patient", *TRUTH_COLUMNS]].reset_index(drop=True)
    records = records or {}
    ref_table, aud_table = cohort_table(pool, reference, classes, records), cohort_table(pool, audited, classes, records)
    options = {k: v for k, v in (("detector", detector), ("score_detector", score_detector), ("score_tail", score_tail)) if v}
    analysis = analyze_cohort(aud_table, ref_table, n_bootstrap=0, seed=seed, evidence=evidence, **options)
    scan = analysis.scan
    score, flagged = scan.score, scan.flagged
    cond = truth["planted_condition"].to_numpy()
    degraded = truth["degraded"].astype(str).to_numpy() == "1"
    is_clean = (cond == "none") & ~degraded
    result: dict = {"seed": seed, "n_reference": int(len(reference)), "n_audited": int(len(audited)),
                    "n_clean": int(is_clean.sum()), "n_clean_flagged": int(flagged[is_clean].sum()), "expected_fpr": scan.expected_fpr,
                    "fpr_flag": float(flagged[is_clean].mean()) if is_clean.any() else float("nan"),
                    "fpr_any_class_outlier": float(analysis.anomaly.any_outlier[is_clean].mean()) if is_clean.any() else float("nan"),
                    "heldout_any_class_outlier_rate": scan.heldout_class_fpr, "evidence": list(scan.families), "conditions": {}}
    if training is not None:  # the same audited cohort against the model's training scans as the reference
        train_frame, train_records = training
        rows = rng.choice(train_frame.index.to_numpy(), size=min(n_reference, len(train_frame)), replace=False)
        train_scan = analyze_cohort(aud_table, cohort_table(train_frame, rows, classes, train_records), n_bootstrap=0,
                                    seed=seed, evidence=evidence, **options).scan
        result["n_clean_flagged_training_reference"] = int(train_scan.flagged[is_clean].sum())
    for name in sorted(set(cond) - {"none"}) + ["degraded_scanner"]:
        hit = degraded & (cond == "none") if name == "degraded_scanner" else cond == name
        result["conditions"][name] = {"n": int(hit.sum()), "n_flagged": int(flagged[hit].sum()), "auc": roc_auc(score[hit], score[is_clean]),
                                      "sensitivity": float(flagged[hit].mean()) if hit.any() else float("nan")}
    tests = pd.concat([analysis.bias.tests.assign(family="outliers"), analysis.score_bias.tests.assign(family="score")], ignore_index=True)
    scanner = tests[(tests["family"] == "score") & (tests["column"] == "scanner_model")]
    result["scanner_q"] = float(scanner["q"].iloc[0]) if len(scanner) else float("nan")
    result["scanner_p"] = float(scanner["p"].iloc[0]) if len(scanner) else float("nan")
    result["scanner_detail"] = str(scanner["detail"].iloc[0]) if len(scanner) else ""
    confounded = tests[tests["column"].isin(SCANNER_COLUMNS)]
    result["best_scanner_column_q"] = float(confounded["q"].min()) if len(confounded) else float("nan")
    result["n_score_tests"] = int((tests["family"] == "score").sum())
    result["n_outlier_tests"] = int((tests["family"] == "outliers").sum())
    result["bias_alarms_elsewhere"] = sorted(set(tests.loc[(tests["q"] < 0.05) & ~tests["column"].isin(SCANNER_COLUMNS), "column"]))
    return result, analysis, truth


def null_false_alarms(analysis, n_permutations: int, seed: int, null_chi2_permutations: int = 999) -> dict:
    """Shuffle the metadata across the cohort's scans and rerun every bias test, each family with its own BH.

    An alarm is any q < 0.05 in a family: the score tests (the audit's primary bias analysis), the paper's
    per-class outlier-proportion tests, either of the two, and (for comparison) both pooled into one family.
    """
    from agg2exp_lightning.analysis.bias import bias_tests, joint_q, score_tests
    from agg2exp_lightning.analysis.cohort import ANY_CLASS

    anomaly, scan = analysis.anomaly, analysis.scan
    groups = {ANY_CLASS: pd.Series(anomaly.any_outlier)}
    for i, a in enumerate(analysis.table.classes):
        flags = pd.Series(anomaly.outliers[:, i], dtype="boolean")
        flags[np.isnan(anomaly.scores[:, i])] = pd.NA
        groups[a] = flags
    meta = analysis.table.metadata.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    alarms = {"score": 0, "outliers": 0, "either": 0, "pooled": 0}
    for k in range(n_permutations):
        shuffled = meta.iloc[rng.permutation(len(meta))].reset_index(drop=True)
        out = bias_tests(shuffled, groups, seed=k, n_permutations=null_chi2_permutations).tests  # fewer: time
        sc = score_tests(shuffled, scan.score, n_bootstrap=0, n_permutations=null_chi2_permutations).tests
        hit = {"score": bool((sc["q"] < 0.05).any()), "outliers": bool((out["q"] < 0.05).any())}
        hit["either"] = hit["score"] or hit["outliers"]
        hit["pooled"] = bool((pd.concat(joint_q(out, sc))["q"] < 0.05).any())
        for name, value in hit.items():
            alarms[name] += value
    return {"permutations": n_permutations, "chi2_permutations": null_chi2_permutations, "alarms": alarms,
            "false_alarm_rate": alarms["score"] / n_permutations,
            "false_alarm_rate_outlier_tests": alarms["outliers"] / n_permutations,
            "false_alarm_rate_either_family": alarms["either"] / n_permutations,
            "false_alarm_rate_pooled_family": alarms["pooled"] / n_permutations}


def start_run(checkpoint: str) -> str | None:
    """W&B off, Lightning's logging quiet, and the one file the glob ``checkpoint`` names (``None``, said on stderr, otherwise)."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "agg2exp_lightning.audit.scan_prediction"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    matches = sorted(glob.glob(checkpoint))
    if len(matches) != 1:
        print(f"--checkpoint {checkpoint!r}: expected exactly one file, found {matches}", file=sys.stderr)
        return None
    return matches[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint (a glob is expanded)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "audit_power"))
    parser.add_argument("--n-pool", type=int, default=120, help="subjects in the pool (default %(default)s)")
    parser.add_argument("--pool-seed", type=int, default=202)
    parser.add_argument("--condition-fraction", type=float, default=0.1, help="share of the pool per planted condition")
    parser.add_argument("--degraded-scanner", default="Aquilion ONE")
    parser.add_argument("--shape", type=int, default=80)
    parser.add_argument("--spacing", type=float, default=4.0)
    parser.add_argument("--n-reference", type=int, default=24)
    parser.add_argument("--n-audited", type=int, default=60)
    parser.add_argument("--cohort-seeds", type=int, default=5)
    parser.add_argument("--permutations", type=int, default=1000, help="metadata shuffles of the null (default %(default)s)")
    parser.add_argument("--method", default="vanilla_gradient")
    parser.add_argument("--targets", nargs="+", default=["all"],
                        help="classes to explain (default 'all': every class, as agg2exp-audit explains by default)")
    parser.add_argument("--analyse-only", action="store_true", help="skip explaining: analyse the pool scans explained so far")
    parser.add_argument("--evidence", default=None, help="evidence families of the scan-level score (default: all)")
    parser.add_argument("--detector", default=None, help="per-class detector (default: the audit's, isolation_forest)")
    parser.add_argument("--score-detector", default=None, help="detector of the scan-level score (default: the audit's, robust_distance)")
    parser.add_argument("--score-tail", default=None, help="per-class tail of the scan-level score (default: the audit's, exponential)")
    parser.add_argument("--training-data", default=str(ROOT / "data" / "synthetic_thorax"),
                        help="the model's training data: its train split is explained to measure the training-split reference "
                             "(default %(default)s; 'none' to skip)")
    args = parser.parse_args(argv)
    checkpoint = start_run(args.checkpoint)
    if checkpoint is None:
        return 2

    from agg2exp_lightning.data.phantom import PLANTED_CONDITIONS
    from agg2exp_lightning.data.synthetic import generate_cohort

    targets = None if args.targets == ["all"] else list(args.targets)
    out = Path(args.out)
    t_start = time.perf_counter()
    conditions = {c: args.condition_fraction for c in PLANTED_CONDITIONS if c != "none"}
    pool_dir = generate_cohort(out / "pool", args.n_pool, seed=args.pool_seed, shape=(args.shape,) * 3, spacing=args.spacing,
                               conditions=conditions, degraded_scanner=args.degraded_scanner, progress=False)
    t_gen = time.perf_counter()
    if not args.analyse_only:
        explain_pool(checkpoint, pool_dir, out, method=args.method, targets=targets)
    pool, pool_records = load_pool(pool_dir, out)
    training = None
    train_dir = Path(args.training_data)
    if args.training_data != "none" and (train_dir / "meta.csv").is_file():
        if not args.analyse_only:
            explain_training(checkpoint, train_dir, out, method=args.method, targets=targets)
        if (out / "explained_training" / "scans").is_dir():
            training = load_pool(train_dir, out, folder_name="explained_training", splits=("train",))
    elif args.training_data != "none":
        log.warning("--training-data %s has no meta.csv: the training-split reference is not measured", train_dir)
    t_explain = time.perf_counter()
    classes = sorted({c.split("_explanation_in_")[0] for c in pool.columns if c.endswith("_mass")}, key=lambda c: c)
    from agg2exp_lightning.labels import THORAX_CLASSES

    known = list(THORAX_CLASSES)
    log.info("pool: %d scans explained (%s)", len(pool), ", ".join(f"{k} {v}" for k, v in pool["planted_condition"].value_counts().items()))
    per_seed, first = [], None
    for seed in range(args.cohort_seeds):
        res, analysis, _ = audit_cohort(pool, seed, args.n_reference, args.n_audited, known, records=pool_records, evidence=args.evidence, training=training,
                                         detector=args.detector, score_detector=args.score_detector, score_tail=args.score_tail)
        per_seed.append(res)
        first = first or analysis
        log.info("seed %d: %s", seed, json.dumps(res))
    t_audit = time.perf_counter()
    null = null_false_alarms(first, args.permutations, seed=12345)
    t_null = time.perf_counter()
    summary = {
        "command": " ".join(sys.argv if argv is None else ["benchmarks/audit_power.py", *argv]),
        "checkpoint": checkpoint, "method": args.method, "targets": targets or "all", "n_pool": int(len(pool)),
        "classes": classes, "per_seed": per_seed, "null": null,
        "seconds": {"generate": t_gen - t_start, "explain": t_explain - t_gen, "audit_cohorts": t_audit - t_explain,
                    "null_permutations": t_null - t_audit, "total": t_null - t_start},
    }
    conds = per_seed[0]["conditions"].keys()
    agg = {c: {"auc_mean": float(np.nanmean([s["conditions"][c]["auc"] for s in per_seed])),
               "auc_min": float(np.nanmin([s["conditions"][c]["auc"] for s in per_seed])),
               "sensitivity_mean": float(np.nanmean([s["conditions"][c]["sensitivity"] for s in per_seed])),
               "n_mean": float(np.mean([s["conditions"][c]["n"] for s in per_seed])),
               "flagged": int(sum(s["conditions"][c]["n_flagged"] for s in per_seed)),
               "planted": int(sum(s["conditions"][c]["n"] for s in per_seed))} for c in conds}
    summary["aggregate"] = {
        "conditions": agg,
        "fpr_flag_mean": float(np.nanmean([s["fpr_flag"] for s in per_seed])),
        "clean_flagged": int(sum(s["n_clean_flagged"] for s in per_seed)), "clean": int(sum(s["n_clean"] for s in per_seed)),
        "clean_flagged_training_reference": (int(sum(s["n_clean_flagged_training_reference"] for s in per_seed))
                                             if all("n_clean_flagged_training_reference" in s for s in per_seed) else None),
        "fpr_any_class_outlier_mean": float(np.nanmean([s["fpr_any_class_outlier"] for s in per_seed])),
        "expected_fpr": per_seed[0]["expected_fpr"],
        "scanner_found": int(sum(s["scanner_q"] < 0.05 for s in per_seed)),
        "scanner_q": [s["scanner_q"] for s in per_seed],
        "seeds": len(per_seed),
    }
    summary["hardware"] = hardware_summary()
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1, default=float))
    lines = [f"pool {len(pool)} scans; {args.cohort_seeds} cohorts of {per_seed[0]['n_audited']} audited + {per_seed[0]['n_reference']} reference scans; "
             f"method {args.method}; targets {targets or 'all'}",
             "| condition | scans per cohort | ROC AUC mean (min) over seeds | flagged at the default threshold, all seeds |", "|---|---:|---:|---:|"]
    for c, v in agg.items():
        sens = format_rate(v["flagged"], v["planted"]) if v["planted"] else "-"
        lines.append(f"| {c} | {v['n_mean']:.1f} | {v['auc_mean']:.3f} ({v['auc_min']:.3f}) | {sens} |")
    a = summary["aggregate"]
    n_null, alarms = null["permutations"], null["alarms"]
    lines += [f"clean scans flagged: {format_rate(a['clean_flagged'], a['clean'])} (bound {a['expected_fpr']:.3f}); "
              f"paper's any-class outliers among clean scans: {a['fpr_any_class_outlier_mean']:.3f}",
              ("clean scans flagged with the model's training scans as the reference: "
               + (format_rate(a["clean_flagged_training_reference"], a["clean"]) if a["clean_flagged_training_reference"] is not None
                  else "not measured (no --training-data)")),
              f"evidence families: {', '.join(per_seed[0]['evidence'])}; detectors: per class {first.detector}, "
              f"scan-level score {first.score_detector} ({first.score_tail} tail)",
              f"degraded scanner found (scanner_model q < 0.05) in {a['scanner_found']} of {a['seeds']} seeds "
              f"({format_rate(a['scanner_found'], a['seeds'])}); q = " + ", ".join(f"{q:.3g}" for q in a["scanner_q"]),
              f"bias false alarms under shuffled metadata ({n_null} shuffles): score tests {format_rate(alarms['score'], n_null)}, "
              f"outlier-proportion tests {format_rate(alarms['outliers'], n_null)}, either family {format_rate(alarms['either'], n_null)}, "
              f"both pooled in one BH family {format_rate(alarms['pooled'], n_null)}",
              "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items())]
    lines.insert(0, hardware_line())
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

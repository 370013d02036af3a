"""Domain shift is an anomaly: real chest CTs audited beside unseen synthetic scans, against a synthetic reference.

A model trained on the synthetic cohort has never seen a real CT. Audited together with synthetic scans it
has not seen either, against a reference of other unseen synthetic scans, the real scans should top the
audit's scan-level score. This script measures that through the audit's own code path:

1. a clean synthetic cohort (no planted condition, no degraded scanner) is generated with the project's
   generator (:func:`~agg2exp_lightning.data.synthetic.generate_cohort`) at a seed the demo never trained on
   (``--seed``; the demo trains on seed 0): the first ``--n-reference`` subjects are the reference, the
   next ``--n-synthetic`` are audited;
2. a manifest lists those scans and the real ones (``--real``; rows without labels: real scans have none,
   and the synthetic rows are left unlabelled too, as Dice is not what is measured) with the splits
   ``audited`` and ``reference``;
3. :func:`~agg2exp_lightning.audit.checkpoint_audit.run_checkpoint_audit` (what ``agg2exp-audit --manifest``
   runs) explains every scan and audits the ``audited`` split against the ``reference`` split, in
   ``<out>/audit`` (per-scan records written as each scan finishes: a rerun reuses them);
4. ``results.md`` / ``results.json``: the hardware line, every audited scan ranked by the scan-level score
   with its source (real / synthetic), calibrated p-value, flag and the worklist's top reason, the ranks of
   the real scans, the ROC AUC of real vs synthetic scans, and what the model predicts on each real scan
   (predicted volume per class, from the audit's records, against the reference median);
5. a three-view figure of the model on one real scan (``--figure-scan``, default the first of ``--real``;
   class ``--figure-class``): the audit's own map writer puts the attribution and the prediction back on the
   scan's grid and :func:`~agg2exp_lightning.audit.scan_figures.draw_scan_figures` draws them over the CT.

    python benchmarks/domain_shift.py --checkpoint runs/demo/checkpoints/best-*.ckpt --out runs/domain_shift

The generator's truth never reaches the audit: the manifest holds no source column; real vs synthetic is
only used to score the ranking.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
#: The real chest CTs beside the repository (``../shared/data/real_ct``; see its README).
REAL_SCANS = tuple(ROOT / ".." / "shared" / "data" / "real_ct" / name for name in ("chest_cta.nii.gz", "lung2_image.nrrd"))
#: Split names in the manifest.
AUDITED, REFERENCE = "audited", "reference"

log = logging.getLogger("domain_shift")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint (a glob is expanded; it must match one file)")
    parser.add_argument("--out", default="runs/domain_shift", help="output folder (default %(default)s)")
    parser.add_argument("--real", nargs="+", default=[str(p) for p in REAL_SCANS],
                        help="real scans, any format the audit reads (default: the two real chest CTs in ../shared/data/real_ct)")
    parser.add_argument("--n-synthetic", type=int, default=20, help="unseen synthetic scans audited beside the real ones (default %(default)s)")
    parser.add_argument("--n-reference", type=int, default=20,
                        help="unseen synthetic scans as the reference (default %(default)s; the scan-level score needs at least 10)")
    parser.add_argument("--seed", type=int, default=303, help="seed of the synthetic scans (default %(default)s; the demo trains on seed 0)")
    parser.add_argument("--shape", type=int, default=80, help="synthetic grid, voxels per axis (default %(default)s, the demo cohort's)")
    parser.add_argument("--spacing", type=float, default=4.0, help="synthetic voxel size in mm (default %(default)s, the demo cohort's)")
    parser.add_argument("--method", default="vanilla_gradient", help="attribution method (default %(default)s)")
    parser.add_argument("--targets", nargs="+", default=["all"], help="classes to explain (default 'all', as agg2exp-audit)")
    parser.add_argument("--figure-scan", help="real scan drawn in three views (default: the first of --real)")
    parser.add_argument("--figure-class", default="heart", help="class of the three-view figure (default %(default)s)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator of the audit (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an audit of other settings in <out>/audit")
    return parser


def resolve_checkpoint(pattern: str) -> str:
    """The one file ``pattern`` (a glob) names.

    Raises:
        ValueError: it names none or several.
    """
    matches = sorted(glob.glob(pattern))
    if len(matches) != 1:
        raise ValueError(f"--checkpoint {pattern!r}: expected exactly one file, found {matches or 'none'}")
    return matches[0]


def write_manifest(path: Path, cohort: Path, real: Sequence[str | Path], n_reference: int) -> dict[str, str]:
    """Write the audit's manifest (``image, image_id, split``; no labels) and return ``scan id -> source``.

    The first ``n_reference`` synthetic subjects (in id order) are the reference, the others are audited
    with the real scans. Raises ValueError when a real scan's id repeats one already listed.
    """
    import pandas as pd

    from agg2exp_lightning.data.reading import volume_stem
    from agg2exp_lightning.utils import atomic_write_text

    subjects = sorted(p.name for p in cohort.iterdir() if (p / "ct.nii.gz").is_file())
    rows = [{"image": str((cohort / sid / "ct.nii.gz").resolve()), "image_id": sid, "split": REFERENCE if i < n_reference else AUDITED}
            for i, sid in enumerate(subjects)]
    sources = {r["image_id"]: "synthetic" for r in rows if r["split"] == AUDITED}
    for scan in real:
        sid = volume_stem(scan)
        if sid in sources or sid in subjects:
            raise ValueError(f"--real {scan}: its id {sid!r} repeats a scan already listed")
        rows.append({"image": str(Path(scan).resolve()), "image_id": sid, "split": AUDITED})
        sources[sid] = "real"
    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
    return sources


def top_reason(row: Mapping[str, Any] | None) -> str:
    """The worklist's first reason in words (its most anomalous class), or a dash for a scan below the worklist."""
    from agg2exp_lightning.analysis.anomaly import describe_worklist_row

    if row is None:
        return "- (below the worklist)"
    first = list(row["classes"])[:1]  # type: ignore[index]
    return describe_worklist_row({**row, "classes": first, "evidence_left_out": ""}) or "-"


def ranking(analysis: Any, sources: Mapping[str, str]) -> list[dict[str, Any]]:
    """Every audited scan, most anomalous first: rank (ties share the best rank), id, source, score, p, flag, top reason."""
    scan = analysis.scan
    if scan is None:
        raise ValueError("the audit has no scan-level score (too few reference scans): give --n-reference 10 or more")
    ids = [str(i) for i in analysis.table.ids]
    score = np.asarray(scan.score, dtype=float)
    key = np.where(np.isfinite(score), score, -np.inf)
    order = np.argsort(-key, kind="stable")
    worklist = {str(row["id"]): row for row in analysis.worklist}
    rows = []
    for n in order:
        rows.append({"rank": int((key > key[n]).sum()) + 1, "scan": ids[n], "source": sources.get(ids[n], "synthetic"),
                     "score": float(score[n]), "p_value": float(scan.p_value[n]), "flagged": bool(scan.flagged[n]),
                     "top_reason": top_reason(worklist.get(ids[n]))})
    return rows


def predicted_volumes(audit_dir: Path, real_ids: Sequence[str], reference_ids: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``class -> {real id: predicted ml, "reference median": ml}`` from the audit's records (0 where not predicted)."""
    from agg2exp_lightning.audit.scan_records import load_records

    def volumes(folder: Path, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        done, _ = load_records(folder, list(ids))
        out = {}
        for rec in done:
            vol = ((rec.get("evidence") or {}).get("prediction") or {}).get("volume_ml") or [None] * len(rec["classes"])
            out[str(rec["id"])] = {c: 0.0 if v is None or not np.isfinite(v) else float(v) for c, v in zip(rec["classes"], vol)}
        return out

    real, ref = volumes(audit_dir / "scans", real_ids), volumes(audit_dir / "reference_scans", reference_ids)
    classes = next(iter(real.values()), {}).keys()
    table = {}
    for c in classes:
        row: dict[str, float | None] = {sid: real[sid].get(c) for sid in real_ids if sid in real}
        ref_c = [v[c] for v in ref.values() if c in v]
        row["reference median"] = float(np.median(ref_c)) if ref_c else None
        table[c] = row
    return table


def draw_prediction_figure(checkpoint: str, scan: str | Path, scan_id: str, cls: str, out: Path, *, method: str) -> Path:
    """The three-view figure of class ``cls`` on a real scan: the model's attribution (``method``) and predicted region
    put back on the scan's grid by the audit's map writer, drawn over the CT by the audit's figure code.

    The maps are kept in ``out/maps``; a rerun draws from them without explaining again.

    Raises:
        ValueError: ``cls`` is not one of the model's classes, or the maps could not be written.
    """
    from agg2exp_lightning.audit.maps import MapWriter, maps_written
    from agg2exp_lightning.audit.scan_figures import draw_scan_figures
    from agg2exp_lightning.model_loading import load_model
    from agg2exp_lightning.utils import plain_tensor

    loaded = load_model(checkpoint)
    names = list(loaded.class_names)
    if cls not in names:
        raise ValueError(f"--figure-class {cls!r}: not a class of the model; its classes are {names}")
    maps = out / "maps"
    if not maps_written(maps, scan_id):
        from agg2exp_lightning.audit.checkpoint_audit import make_scan_explainer

        runner = loaded.scan_runner()
        window = dict(runner.window)
        explainer = make_scan_explainer(method, None, window.get("roi_size"), targets=[names.index(cls)], window=window)
        image = runner.preprocess(scan)  # [1, *S], carrying what undoing the preprocessing needs
        result = explainer(loaded.model, plain_tensor(image)[None].float())
        spatial = tuple(image.shape[1:])
        attribution = plain_tensor(result.attributions).detach().float().cpu().reshape(1, *spatial)
        prediction = plain_tensor(result.prediction).detach().long().cpu().reshape(spatial)
        if MapWriter(maps, names, runner=runner)(scan_id, image, attribution, prediction, [names.index(cls)], model=loaded.model) is None:
            raise ValueError(f"the maps of {scan} could not be written (see the warning above)")
    (entry,) = [e for e in draw_scan_figures(maps, out, scan_id, scan, [cls]) if e["class"] == cls]
    return Path(entry["figure"])


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or not np.isfinite(v) else format(v, fmt)


def render(result: Mapping[str, Any]) -> str:
    """``results.md``: the hardware line first, then the command, the ranking, the summary and the predicted volumes."""
    from agg2exp_lightning.utils.hardware import hardware_line

    rows = result["rows"]
    lines = [hardware_line(), "", f"Command: `{result['command']}`", "",
             f"Checkpoint `{result['checkpoint']}`; method {result['method']}; {result['n_audited']} audited scans "
             f"({result['n_real']} real, {result['n_audited'] - result['n_real']} synthetic, seed {result['seed']}) against "
             f"{result['n_reference']} synthetic reference scans; flag at contamination {result['contamination']:g} "
             f"(expected false-positive rate {_num(result['expected_fpr'], '.3f')}).", "",
             "| rank | scan | source | scan-level score | calibrated p | flagged | the worklist's top reason |",
             "|---:|---|---|---:|---:|---|---|"]
    for r in rows:
        scan = f"**{r['scan']}**" if r["source"] == "real" else r["scan"]
        source = "**real**" if r["source"] == "real" else r["source"]
        lines.append(f"| {r['rank']} | {scan} | {source} | {_num(r['score'], '.2f')} | {_num(r['p_value'], '.3f')} | "
                     f"{'yes' if r['flagged'] else 'no'} | {r['top_reason'].replace('|', '/')} |")
    if result["notes"]:  # e.g. too few reference scans finished, so the audited scans were their own reference
        lines += ["", *(f"Note from the audit: {note}" for note in result["notes"])]
    lines += ["", result["summary_line"],
              f"ROC AUC of the scan-level score, real vs synthetic scans: {_num(result['auc'], '.3f')}", ""]
    volumes = result["predicted_volumes"]
    if volumes:
        real = [sid for sid in result["real_ids"] if any(sid in row for row in volumes.values())]
        lines += ["What the model predicts on the real scans: predicted volume per class (ml; 0 = not predicted), "
                  "against the median over the synthetic reference scans", "",
                  "| class | " + " | ".join(real) + " | synthetic reference median |", "|---|" + "---:|" * (len(real) + 1)]
        for cls, row in volumes.items():
            lines.append(f"| {cls} | " + " | ".join(_num(row.get(sid), '.0f') for sid in real) + f" | {_num(row['reference median'], '.0f')} |")
        lines.append("")
    if result.get("figure"):
        lines += [f"Three-view figure: `{result['figure']}`", ""]
    lines.append("seconds of this run: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items())
                 + (f" ({result['records_reused']} scans' explanations reused from an earlier run)" if result["records_reused"] else ""))
    return "\n".join(lines) + "\n"


def domain_shift(args: argparse.Namespace) -> dict[str, Any]:
    """Generate, audit, rank and draw (see the module docstring); writes ``results.md`` and ``results.json`` in ``args.out``."""
    from audit_power import roc_auc

    from agg2exp_lightning.audit.checkpoint_audit import run_checkpoint_audit
    from agg2exp_lightning.data.reading import volume_stem
    from agg2exp_lightning.data.synthetic import generate_cohort
    from agg2exp_lightning.utils import atomic_write_text
    from agg2exp_lightning.utils.hardware import hardware_summary

    checkpoint = resolve_checkpoint(args.checkpoint)
    out = Path(args.out)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    n_total = args.n_reference + args.n_synthetic
    cohort = generate_cohort(out / f"synthetic_seed{args.seed}_{n_total}", n_total, seed=args.seed, shape=(args.shape,) * 3,
                             spacing=args.spacing, progress=False)
    sources = write_manifest(out / "manifest.csv", cohort, args.real, args.n_reference)
    seconds["cohort"] = time.perf_counter() - t
    reused = _finished_records(out / "audit", out / "manifest.csv")
    t = time.perf_counter()
    targets = None if args.targets == ["all"] else list(args.targets)
    outputs = run_checkpoint_audit(checkpoint, out / "audit", manifest=out / "manifest.csv", split=AUDITED, reference_split=REFERENCE,
                                   method=args.method, targets=targets, accelerator=args.accelerator, overwrite=args.overwrite)
    seconds["audit"] = time.perf_counter() - t
    analysis = outputs.analysis
    rows = ranking(analysis, sources)
    real_ids = [volume_stem(s) for s in args.real]
    real_ranks = [r["rank"] for r in rows if r["source"] == "real"]
    score = {r["scan"]: r["score"] for r in rows}
    auc = roc_auc(np.array([score[s] for s in real_ids if s in score]),
                  np.array([r["score"] for r in rows if r["source"] == "synthetic"]))
    missing = [s for s in real_ids if s not in score]
    ranks = (" and " if len(real_ranks) <= 2 else ", ").join(map(str, real_ranks)) or "none"
    summary_line = f"real scans ranked {ranks} of {len(rows)}" + (
        f" (not audited: {', '.join(missing)}; see {out / 'audit' / 'failed_scans.json'})" if missing else "")
    figure = None
    figure_scan = args.figure_scan or args.real[0]
    t = time.perf_counter()
    try:
        figure = draw_prediction_figure(checkpoint, figure_scan, volume_stem(figure_scan), args.figure_class, out, method=args.method)
    except (OSError, ValueError) as err:
        log.warning("three-view figure of %s not drawn: %s: %s", figure_scan, type(err).__name__, err)
    seconds["figure"] = time.perf_counter() - t
    scan_level = analysis.scan
    result = {
        "command": "python benchmarks/domain_shift.py " + " ".join(args.argv),
        "checkpoint": checkpoint, "method": args.method, "seed": args.seed,
        "n_audited": len(rows), "n_real": len(real_ranks), "n_reference": int(scan_level.n_reference),
        "contamination": float(scan_level.contamination), "expected_fpr": float(scan_level.expected_fpr),
        "rows": rows, "real_ids": real_ids, "real_ranks": real_ranks, "auc": auc, "summary_line": summary_line,
        "predicted_volumes": predicted_volumes(out / "audit", real_ids, _reference_ids(out / "manifest.csv")),
        "notes": list(analysis.notes), "figure": str(figure) if figure else None, "audit": str(out / "audit"), "seconds": seconds,
        "records_reused": reused,
    }
    text = render(result)
    atomic_write_text(out / "results.md", text)
    atomic_write_text(out / "results.json", json.dumps({"hardware": hardware_summary(), **result}, indent=1, default=float))
    print(text, end="")
    return result


def _reference_ids(manifest: Path) -> list[str]:
    import pandas as pd

    table = pd.read_csv(manifest, dtype=str)
    return table.loc[table["split"] == REFERENCE, "image_id"].tolist()


def _finished_records(audit_dir: Path, manifest: Path) -> int:
    """How many of the manifest's scans already have a sound record in ``audit_dir`` (the audit will reuse them)."""
    import pandas as pd

    from agg2exp_lightning.audit.scan_audit import SET_FOLDERS
    from agg2exp_lightning.audit.scan_records import is_finished

    table = pd.read_csv(manifest, dtype=str)
    folders = {AUDITED: audit_dir / SET_FOLDERS["audited"], REFERENCE: audit_dir / SET_FOLDERS["reference"]}
    return sum(is_finished(folders[split], sid) for sid, split in zip(table["image_id"], table["split"]))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name, value in (("--n-synthetic", args.n_synthetic), ("--n-reference", args.n_reference)):
        if value < 1:
            parser.error(f"{name}: expected a positive number of scans, got {value}")
    from agg2exp_lightning.analysis.anomaly import MIN_REFERENCE_SCANS

    if args.n_reference < MIN_REFERENCE_SCANS:
        parser.error(f"--n-reference: the scan-level score needs at least {MIN_REFERENCE_SCANS} reference scans (2 per fold), "
                     f"got {args.n_reference}")
    missing = [s for s in args.real if not Path(s).exists()]
    if missing:
        parser.error(f"--real: not found: {', '.join(missing)}")
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "agg2exp_lightning.audit.scan_prediction"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        domain_shift(args)
    except ValueError as err:  # DataError is a ValueError: one line, exit status 2 as the audit's CLI does
        print(f"domain_shift: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which detector should score the scan-level score's families? Simulated features with known faults, not the planted cohort.

Usage:
    python benchmarks/detector_power.py [--repeats 40] [--results benchmarks/results/detector_power_cpu.md]

Each repetition draws a small audit as the scan-level score sees it: ``A = 4`` classes with ``F`` features each
(``F`` = 4, as an evidence family, or 17, as a class's shares), ``M = 24`` clean reference scans, and 50 audited
scans of which 10 carry a fault in **one** class. The clean features are correlated normals (pairwise
correlation 0.5), or heavy-tailed (Student t, 3 degrees of freedom), or half of them small counts (Poisson, mean
1.5). Faults, in standard deviations of a clean feature: a shift of one feature by 3, a shift of every feature
by 1, every feature's spread tripled, and the correlation broken (the same marginals, features independent).
Every detector of :data:`~agg2exp_lightning.analysis.detectors.DETECTORS` scores the scans through the audit's
own :func:`~agg2exp_lightning.analysis.anomaly.scan_anomaly_scores` (cross-fitting, conformal p per class,
Fisher's combination), so only the detector differs. Printed: mean ROC AUC of faulty vs clean audited scans
per scenario; the time of one audit (fit + score, every class) per detector as a ratio to the Isolation
Forest's; and the peak Python memory of one audit with the most features (tracemalloc, run apart from the timing).

None of these scenarios comes from the planted conditions of ``benchmarks/audit_power.py``; the point is to
choose the default detector on faults whose truth is known by construction.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agg2exp_lightning.analysis.anomaly import scan_anomaly_scores  # noqa: E402
from agg2exp_lightning.analysis.detectors import DETECTORS  # noqa: E402
from agg2exp_lightning.utils import atomic_write_text  # noqa: E402
from agg2exp_lightning.utils.hardware import hardware_line  # noqa: E402

N_CLASSES, N_REFERENCE, N_CLEAN, N_FAULTY = 4, 24, 40, 10
CLEAN = ("normal", "heavy-tailed", "counts")
FAULTS = ("one feature +3 sd", "every feature +1 sd", "spread x3", "correlation broken")


def _clean(rng: np.random.Generator, n: int, f: int, kind: str, *, independent: bool = False) -> np.ndarray:
    """``[n, A, f]`` clean features of one kind, unit spread; correlated 0.5 within a class unless ``independent``."""
    shared = np.zeros((n, N_CLASSES, 1)) if independent else rng.standard_normal((n, N_CLASSES, 1))
    own = rng.standard_normal((n, N_CLASSES, f))
    x = (shared + own) / np.sqrt(2.0) if not independent else own
    if kind == "heavy-tailed":  # t(3) with the same correlation, scaled to unit spread
        x = x / np.sqrt(rng.chisquare(3, (n, N_CLASSES, 1)) / 3) / np.sqrt(3.0)
    elif kind == "counts":  # half the features are counts with mean 1.5 (like connected components)
        half = f // 2
        x[..., :half] = (rng.poisson(1.5, (n, N_CLASSES, half)) - 1.5) / np.sqrt(1.5)
    return x


def draw(rng: np.random.Generator, f: int, kind: str, fault: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference ``[M, A, f]``, audited ``[N, A, f]`` (the last ``N_FAULTY`` faulty in class 0), truth ``[N]``."""
    ref = _clean(rng, N_REFERENCE, f, kind)
    aud = _clean(rng, N_CLEAN + N_FAULTY, f, kind)
    bad = slice(N_CLEAN, None)
    if fault == "one feature +3 sd":
        aud[bad, 0, f - 1] += 3.0
    elif fault == "every feature +1 sd":
        aud[bad, 0, :] += 1.0
    elif fault == "spread x3":
        aud[bad, 0, :] *= 3.0
    elif fault == "correlation broken":
        aud[bad, 0, :] = _clean(rng, N_FAULTY, f, kind, independent=True)[:, 0, :]
    else:
        raise ValueError(f"unknown fault {fault!r}")
    return ref, aud, np.r_[np.zeros(N_CLEAN), np.ones(N_FAULTY)]


def audit_scores(ref: np.ndarray, aud: np.ndarray, detector: str, seed: int) -> np.ndarray:
    """The scan-level score with ``detector`` scoring the features as an evidence family (shares switched off)."""
    dummy = np.full((len(aud), N_CLASSES, 2), 0.5)
    return scan_anomaly_scores(dummy, [f"c{i}" for i in range(N_CLASSES)], np.full((len(ref), N_CLASSES, 2), 0.5),
                               families={"simulated": (aud, ref)}, shares=False, random_state=seed,
                               detector=detector, score_detector=detector).score


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=40, help="draws per scenario (default %(default)s)")
    p.add_argument("--features", type=int, nargs="+", default=[4, 17])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "detector_power_cpu.md")
    args = p.parse_args(argv)
    detectors = list(DETECTORS)
    lines = [hardware_line(), "", f"`python benchmarks/detector_power.py --repeats {args.repeats}`: mean ROC AUC of faulty vs clean "
             f"audited scans ({N_REFERENCE} reference, {N_CLEAN} clean + {N_FAULTY} faulty audited, {N_CLASSES} classes, fault in one)", "",
             "| features | clean features | fault | " + " | ".join(detectors) + " |", "|---|---|---|" + "---:|" * len(detectors)]
    seconds = {d: 0.0 for d in detectors}
    peak = {d: 0 for d in detectors}
    means: dict[str, list[float]] = {d: [] for d in detectors}
    for f in args.features:
        for kind in CLEAN:
            for fault in FAULTS:
                aucs = {d: [] for d in detectors}
                for r in range(args.repeats):
                    ref, aud, truth = draw(np.random.default_rng([f, CLEAN.index(kind), FAULTS.index(fault), r]), f, kind, fault)
                    for d in detectors:
                        t0 = time.perf_counter()
                        score = audit_scores(ref, aud, d, seed=r)
                        seconds[d] += time.perf_counter() - t0
                        aucs[d].append(roc_auc_score(truth, score))
                for d in detectors:
                    means[d].append(float(np.mean(aucs[d])))
                lines.append(f"| {f} | {kind} | {fault} | " + " | ".join(f"{np.mean(aucs[d]):.3f}" for d in detectors) + " |")
                print(lines[-1], flush=True)
    lines.append("| | | **mean over scenarios** | " + " | ".join(f"**{np.mean(means[d]):.3f}**" for d in detectors) + " |")
    ref, aud, _ = draw(np.random.default_rng(0), max(args.features), "normal", FAULTS[0])
    for d in detectors:  # one audit under tracemalloc (which slows allocation-heavy code: not timed)
        tracemalloc.start()
        audit_scores(ref, aud, d, seed=0)
        peak[d] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    base = seconds["isolation_forest"]
    lines += ["", "| detector | seconds per audit | time vs isolation_forest | peak Python memory of one audit |", "|---|---:|---:|---:|"]
    n_audits = len(args.features) * len(CLEAN) * len(FAULTS) * args.repeats
    for d in detectors:
        lines.append(f"| {d} | {seconds[d] / n_audits:.3f} | {seconds[d] / base:.2f}x | {peak[d] / 2**20:.1f} MiB |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.results, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

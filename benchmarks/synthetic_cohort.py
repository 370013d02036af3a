"""Speed and memory of the synthetic thorax generator, grids side by side in one run.

Usage: python benchmarks/synthetic_cohort.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc

import numpy as np

from agg2exp_lightning.data.phantom import generate_subject
from agg2exp_lightning.data.synthetic import generate_cohort
from agg2exp_lightning.utils.hardware import hardware_line

GRIDS = (((80, 80, 80), 4.0), ((64, 64, 64), 5.0), ((40, 40, 40), 8.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(hardware_line(), flush=True)
    rows = []
    for shape, spacing in GRIDS:
        times = []
        for i in range(args.repeats):
            t = time.perf_counter()
            generate_subject(np.random.default_rng(i), shape, spacing)
            times.append(time.perf_counter() - t)
        tracemalloc.start()
        generate_subject(np.random.default_rng(0), shape, spacing)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            generate_cohort(tmp + "/c", args.repeats, shape=shape, spacing=spacing, progress=False)
            write = (time.perf_counter() - t) / args.repeats
        rows.append((shape, spacing, float(np.median(times)), write, peak / 2**20))
    base = rows[0][2]
    print(f"{'grid':>14} {'mm':>4} {'generate s':>11} {'ratio':>6} {'generate+write s':>17} {'peak MiB':>9}")
    for shape, spacing, gen, write, peak in rows:
        print(f"{'x'.join(map(str, shape)):>14} {spacing:4.1f} {gen:11.3f} {gen / base:6.2f} {write:17.3f} {peak:9.1f}")


if __name__ == "__main__":
    main()

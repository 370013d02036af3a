"""Batch-one 3D convolutions on a CPU: PyTorch's own choice against ``onednn_conv3d``.

Usage:
    python benchmarks/bench_cpu_conv.py [--repeats 10] [--threads 0]

A ``Conv3d(C, C, 3, padding=1)`` forward + backward (input and weight gradients) with batch 1 at the sizes of
the demo Swin-UNETR's levels (12 channels at 64^3 and 32^3, 24 at 16^3, 48 at 8^3), fp32, timed in two fresh
processes:

- ``pytorch``: ``F.conv3d`` as PyTorch runs it (its rule sends the smaller levels to the native
  ``slow_conv3d``; 12 channels at 64^3 already goes to oneDNN);
- ``onednn_conv3d``: the same inside :func:`agg2exp_lightning.utils.cpu_conv.onednn_conv3d` (the depth split
  for the calls PyTorch would run natively; the 64^3 row is the control: nothing is routed).

Printed and written to ``benchmarks/results/cpu_conv_<tag>.md``: milliseconds per pass (median), the ratio and
the peak resident memory of each process.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line

SHAPES = ((12, 64), (12, 32), (24, 16), (48, 8))
VARIANTS = ("pytorch", "onednn_conv3d")


def child(variant: str, repeats: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from agg2exp_lightning.utils.cpu_conv import onednn_conv3d

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    for channels, side in SHAPES:
        x = torch.randn(1, channels, side, side, side, requires_grad=True)
        w = torch.randn(channels, channels, 3, 3, 3, requires_grad=True)
        times = []
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            with onednn_conv3d(variant == "onednn_conv3d"):
                y = F.conv3d(x, w, padding=1)
            torch.autograd.grad(y.square().sum(), (x, w))
            if i >= 2:
                times.append(time.perf_counter() - t0)
        out[f"{channels}@{side}"] = statistics.median(times) * 1e3
    return {"variant": variant, "ms": out, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="results file (default: benchmarks/results/cpu_conv_cpu.md)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.threads)))
        return 0
    rows = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--child", variant, "--repeats", str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"variant {variant} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(rows[variant]), flush=True)
    base, fast = rows["pytorch"], rows["onednn_conv3d"]
    lines = [hardware_line(), "",
             f"One Conv3d(C, C, 3, padding=1) forward + backward, batch 1, fp32, median of {args.repeats}, "
             f"threads {args.threads or 'default'}: `python benchmarks/bench_cpu_conv.py --repeats {args.repeats}"
             + (f" --threads {args.threads}" if args.threads else "") + "`", "",
             "| channels @ side | pytorch ms | onednn_conv3d ms | speed-up |", "|---|---:|---:|---:|"]
    for key, ms in base["ms"].items():
        lines.append(f"| {key}^3 | {ms:.1f} | {fast['ms'][key]:.1f} | {ms / fast['ms'][key]:.2f}x |")
    lines += ["", f"Peak resident memory: pytorch {base['peak_rss_mib']:.0f} MiB, onednn_conv3d {fast['peak_rss_mib']:.0f} MiB."]
    text = "\n".join(lines) + "\n"
    out = args.out or Path(__file__).parent / "results" / "cpu_conv_cpu.md"
    atomic_write_text(out, text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

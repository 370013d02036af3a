"""Why precision is chosen by capability: one 3D convolution, fp32 vs bf16 autocast, with and without native bf16.

Usage:
    python benchmarks/bench_conv_precision.py [--repeats 3] [--threads 1]

One ``Conv3d(12, 12, 3)`` forward + backward on a 64^3 volume (the demo model's first stage), timed in fp32
and under ``torch.autocast("cpu", torch.bfloat16)``, each in a fresh process:

- ``as is``: this CPU as PyTorch finds it;
- ``capped at AVX2``: the same CPU with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``, so oneDNN has no
  bfloat16 instructions (what a CPU without AVX512_BF16/AMX, e.g. AMD Zen 3, gives it). On a CPU without native
  bf16 both rows show the emulated case.

Printed and written to ``benchmarks/results/conv_precision_cpu.md``: process CPU seconds per pass (median; CPU time, so
a busy machine does not skew the ratio), the bf16/fp32
ratio, what ``precision="auto"`` picks in that process and why, and the peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line

CAPPED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def child(repeats: int, threads: int) -> dict:
    import torch

    from agg2exp_lightning.utils.hardware import choose_precision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(12, 12, 3, padding=1)
    x = torch.randn(1, 12, 64, 64, 64, requires_grad=True)
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        times = []
        for i in range(repeats + 1):  # one warm-up pass
            t = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = conv(x)
            y.float().sum().backward()
            if i:
                times.append(time.process_time() - t)
        out[name] = statistics.median(times)
    os.environ.pop("AGG2EXP_AUTO_PRECISION", None)
    choice = choose_precision("auto", "cpu")
    return {**out, "auto": choice.used, "why": choice.why, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "conv_precision_cpu.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats, args.threads)))
        return 0
    rows = []
    for label, extra in (("as is", {}), ("capped at AVX2", CAPPED)):
        env = {k: v for k, v in os.environ.items() if k not in CAPPED}
        env.update(extra)
        cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--threads", str(args.threads)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"{label} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append((label, json.loads(done.stdout.strip().splitlines()[-1])))
    lines = [hardware_line(), "",
             f"One Conv3d(12, 12, 3) forward + backward on 1x12x64^3, {args.threads} thread(s), median of {args.repeats}; "
             f"`python benchmarks/bench_conv_precision.py --repeats {args.repeats} --threads {args.threads}`", "",
             "| CPU as seen by PyTorch | fp32 CPU s | bf16 autocast CPU s | bf16 / fp32 | auto picks | why | peak RSS MiB |",
             "|---|---:|---:|---:|---|---|---:|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['fp32']:.3f} | {r['bf16']:.3f} | {r['bf16'] / r['fp32']:.2f}x | {r['auto']} | {r['why']} | "
                     f"{r['peak_rss_mib']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

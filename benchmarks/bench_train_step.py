"""Where a training step of the demo model spends its time, and what makes it faster on a CPU.

Usage:
    python benchmarks/bench_train_step.py [--steps 20] [--variants fp32 malloc channels_last bf16 bf16+malloc]

One training step as the demo takes it (Swin-UNETR of ``configs/demo.yaml`` on one 64^3 volume:
forward, DiceCE with uniform weights (weights do not change the cost), backward, AdamW), timed for each
variant in a fresh process of its own, so that the variants do not share an allocator and each gets its
own peak resident memory:

- ``fp32``: as the demo trained before this benchmark existed (the obvious way);
- ``malloc``: the same after :func:`agg2exp_lightning.utils.allocator.keep_freed_memory` (glibc keeps
  freed memory instead of handing it back to the kernel, which zeroes the pages again on the next
  touch: the demo's high system time); ``agg2exp-train`` calls it;
- ``channels_last``: model and input in ``torch.channels_last_3d``;
- ``bf16``: ``torch.autocast("cpu", torch.bfloat16)`` around forward and loss (what Lightning's
  ``precision: bf16-mixed`` does);
- ``onednn``: forward and loss inside :func:`agg2exp_lightning.utils.cpu_conv.onednn_conv3d` (the batch-one
  convolutions of the 32^3 and smaller levels through oneDNN instead of PyTorch's native kernel; training does this);
- ``window4``: the Swin-UNETR with attention windows of 4^3 tokens instead of MONAI's 7^3 (the demo config's
  ``window_size: 4``);
- combinations joined by ``+``.

Printed: seconds per step (median of ``--steps``), the ratio to ``fp32``, user and system CPU seconds per
step, minor page faults per step, and the peak resident memory of each process.
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

#: glibc's allocator variables, kept out of every variant's environment (``malloc`` sets them with mallopt).
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
VARIANTS = ("fp32", "malloc", "malloc+onednn", "malloc+window4", "malloc+onednn+window4", "bf16+malloc")
PARTS = ("fp32", "malloc", "channels_last", "bf16", "onednn", "window4")


def run_variant(variant: str, steps: int, threads: int | None) -> dict:
    """Time ``steps`` training steps of the demo model in this process."""
    import torch

    from agg2exp_lightning.model import SegmentationModule
    from agg2exp_lightning.utils.allocator import keep_freed_memory
    from agg2exp_lightning.utils.cpu_conv import onednn_conv3d

    if threads:
        torch.set_num_threads(threads)
    parts = set(variant.split("+"))
    if "malloc" in parts and not keep_freed_memory():
        raise SystemExit("variant malloc: mallopt is not available here (glibc only)")
    torch.manual_seed(0)
    module = SegmentationModule(num_classes=17, feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 6, 12, 24),
                                norm_name="instance", roi_size=(64, 64, 64), class_weights=[1.0] * 17,
                                window_size=4 if "window4" in parts else 7)
    net, loss_fn = module.net, module.loss
    x = torch.rand(1, 1, 64, 64, 64)
    y = torch.randint(0, 17, (1, 1, 64, 64, 64)).float()
    if "channels_last" in parts:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in parts else torch.autocast("cpu", enabled=False)
    times, r0 = [], None
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        with cast, onednn_conv3d("onednn" in parts):
            loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"variant": variant, "s_per_step": statistics.median(times), "mean_s_per_step": statistics.fmean(times),
            "user_s_per_step": (ru.ru_utime - r0.ru_utime) / steps, "sys_s_per_step": (ru.ru_stime - r0.ru_stime) / steps,
            "minor_faults_per_step": (ru.ru_minflt - r0.ru_minflt) / steps, "peak_rss_mib": ru.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"{', '.join(PARTS)} or a combination joined by +")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step_cpu.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for v in args.variants:
        if not set(v.split("+")) <= set(PARTS):
            p.error(f"argument --variants: {v!r} is not one of {', '.join(PARTS)} or a combination joined by +")
    if args.child:
        print(json.dumps(run_variant(args.child, args.steps, args.threads)))
        return 0
    rows = []
    for variant in args.variants:
        env = dict(os.environ)
        for k in MALLOC_ENV:
            env.pop(k, None)
        cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--threads", str(args.threads)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"variant {variant} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r["s_per_step"] for r in rows if r["variant"] == "fp32"), rows[0]["s_per_step"])
    lines = [f"Demo model training step (64^3, feature_size 12, depths 1,1,1,1), median of {args.steps} steps, "
             f"`python benchmarks/bench_train_step.py --steps {args.steps}`", "",
             "| variant | s/step | speed-up vs fp32 | user s/step | system s/step | minor faults/step | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['s_per_step']:.3f} | {base / r['s_per_step']:.2f}x | {r['user_s_per_step']:.2f} | "
                     f"{r['sys_s_per_step']:.2f} | {r['minor_faults_per_step']:.0f} | {r['peak_rss_mib']:.0f} |")
    text = "\n".join(lines) + "\n"
    text = hardware_line() + "\n\n" + text
    print(text)
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The explanation memory estimate against measured peaks, with the per-voxel constant probed per model.

Usage:
    python benchmarks/bench_memory.py                       # VG at 96^3 and 128^3, SG through 64^3 windows at 128^3
    python benchmarks/bench_memory.py --cases vg:64 sg:96:64 --feature-size 12

Model: MONAI Swin-UNETR (depths 1,1,1,1, instance norm, 17 classes, random init, seed 0); input: uniform
noise. Each case runs in two fresh processes so that no allocation of one measurement is reused by
another (glibc keeps freed memory, which would hide a later peak):
    1. the probe: :func:`~agg2exp_lightning.explain.memory.measure_pass_bytes_per_voxel` at the probe
       size ``explain`` would use (one window, or the volume cut to 64^3);
    2. the explanation: ``explain(...)`` with that constant, its peak resident set size minus the RSS just
       before the call (sampled every 5 ms from /proc/self/statm; CUDA: ``max_memory_allocated``).
The estimate is :func:`~agg2exp_lightning.explain.memory.explain_memory_estimate` with the probed
constant; the table gives estimate / measured (target: within 25 %, i.e. 0.75-1.25).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line


def _model(feature_size: int, device: str) -> torch.nn.Module:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=17, feature_size=feature_size, depths=(1, 1, 1, 1)).to(device).eval()


def _parse(case: str) -> tuple[str, int, int | None]:
    parts = case.split(":")
    return parts[0], int(parts[1]), (int(parts[2]) if len(parts) > 2 else None)


def _child(args: argparse.Namespace) -> dict:
    from agg2exp_lightning.explain.memory import PROBE_EDGE, measure_pass_bytes_per_voxel

    method, size, roi = _parse(args.case)
    torch.set_num_threads(args.threads)
    model = _model(args.feature_size, args.device)
    if args.stage == "probe":
        shape = (roi,) * 3 if roi else (min(size, PROBE_EDGE),) * 3
        return {"bytes_per_voxel": measure_pass_bytes_per_voxel(model, shape), "probe": shape}
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_explain import PeakRSS

    from agg2exp_lightning.explain import explain

    image = torch.rand(1, size, size, size, generator=torch.Generator().manual_seed(0)).to(args.device)
    opts = {"n_samples": 2} if method == "sg" else {"n_samples": 20} if method == "ks_semantic" else {"n_steps": 2} if method == "ig" else {}
    window = {"roi_size": (roi,) * 3, "sw_batch_size": 1} if roi else {}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        explain(model, image, method=method, pass_bytes_per_voxel=args.bytes_per_voxel, batch_size=1, **window, **opts)
        return {"peak_bytes": torch.cuda.max_memory_allocated() - start}
    with PeakRSS() as mem:
        explain(model, image, method=method, pass_bytes_per_voxel=args.bytes_per_voxel, batch_size=1, **window, **opts)
    return {"peak_bytes": mem.peak_mib * 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["vg:96", "vg:128", "sg:128:64"], help="method:size[:window]")
    parser.add_argument("--feature-size", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory_estimate.md")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=("probe", "explain"), help=argparse.SUPPRESS)
    parser.add_argument("--bytes-per-voxel", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_child(args)))
        return
    from agg2exp_lightning.explain.memory import explain_memory_estimate

    base = [sys.executable, __file__, "--feature-size", str(args.feature_size), "--device", args.device, "--threads", str(args.threads)]
    rows = []
    for case in args.cases:
        method, size, roi = _parse(case)
        def run(*extra: str, case: str = case) -> dict:
            out = subprocess.run([*base, "--case", case, *extra], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError((out.stderr.strip().splitlines() or ["?"])[-1])
            return json.loads(out.stdout.strip().splitlines()[-1])

        try:
            probe = run("--stage", "probe")
            measured = run("--stage", "explain", "--bytes-per-voxel", str(probe["bytes_per_voxel"]))["peak_bytes"]
        except RuntimeError as err:  # report the case and go on
            print(f"{case}: failed: {err}", flush=True)
            continue
        n_targets = 17
        est = explain_memory_estimate((size,) * 3, method, num_classes=17, num_targets=n_targets,
                                      roi_size=(roi,) * 3 if roi else None, sw_batch_size=1, batch_size=1,
                                      pass_bytes_per_voxel=probe["bytes_per_voxel"])
        fixed = explain_memory_estimate((size,) * 3, method, num_classes=17, num_targets=n_targets,
                                        roi_size=(roi,) * 3 if roi else None, sw_batch_size=1, batch_size=1)
        row = {"case": case, "probe": "x".join(map(str, probe["probe"])), "bpv": probe["bytes_per_voxel"], "measured": measured / 2**20,
               "estimate": est.total / 2**20, "ratio": est.total / measured, "fixed_ratio": fixed.total / measured}
        rows.append(row)
        print(row, flush=True)
    lines = ["# Memory estimate vs measured peak\n",
             f"Command: `python benchmarks/bench_memory.py {' '.join(sys.argv[1:])}`\n",
             f"Swin-UNETR feature_size {args.feature_size}, depths (1,1,1,1), instance norm, 17 classes (all targets), "
             f"batch_size 1, sw_batch_size 1, {args.device}, torch {torch.__version__}. Peak: "
             + ("RSS growth during the call" if args.device == "cpu" else "max_memory_allocated growth") + ".\n",
             "| case (method:size[:window]) | probe | probed bytes/voxel | measured peak MiB | estimate MiB | estimate / measured "
             "| with the fixed 8 KiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['probe']} | {r['bpv']:.0f} | {r['measured']:.0f} | {r['estimate']:.0f} | {r['ratio']:.2f} "
                     f"| {r['fixed_ratio']:.2f} |")
    text = "\n".join(lines) + "\n"
    text = hardware_line() + "\n\n" + text
    print(text)
    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()

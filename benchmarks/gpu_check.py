"""One GPU check at the paper's scale: every method's seconds per class and scan beside the paper's column.

Usage:
    bash benchmarks/gpu_check.sh                       # on a CUDA machine, about 5-8 minutes
    python benchmarks/gpu_check.py --tiny --device cpu # dry run of every piece with tiny settings

What it runs, in order, and prints as one table (also written to ``--out``):
    1. ``pytest -m gpu``: the GPU-vs-CPU equality tests (pass/fail counts).
    2. ``benchmarks/bench_metrics.py --device cuda``: faithfulness and sensitivity, ours vs Quantus.
    3. The explain benchmark: MONAI Swin-UNETR (v2, feature_size 48, depths 2,2,2,2, 17 classes, random
       init, final biases shifted until every class is predicted), a synthetic thorax scan of
       TotalSegmentator size at 1.5 mm (``--size`` voxels a side, default 288 = 432 mm), explained for
       all 17 classes through 96^3 sliding windows (overlap 0.25, Gaussian blending, ``sw_batch_size``
       4), each method with ``explain(...)``. Gradient methods run with a few samples and are
       extrapolated to the paper's settings from the measured cost per sample (exact: every sample
       costs the same passes); KernelSHAP runs with fewer coalitions and is extrapolated linearly,
       an upper bound (window reuse saves a larger share of passes with more coalitions). Every
       extrapolated figure is marked ``*``. Peak GPU memory is ``torch.cuda.max_memory_allocated``.

A stage that would start after ``--budget-s`` seconds is skipped and says so. Without a CUDA device
(and without ``--device cpu``) the script prints why and exits with status 0 having measured nothing.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The paper's efficiency column: seconds per class and scan (GPU, TotalSegmentator at 1.5 mm).
PAPER_SECONDS = {
    "vanilla_gradient": 12.0,
    "smoothgrad": 209.0,
    "integrated_gradients": 210.0,
    "kernelshap_semantic": 857.0,
    "kernelshap_cubes": 4278.0,
}
#: The paper's settings (the engine's defaults) and what this check measures before extrapolating.
PAPER_SETTINGS = {"smoothgrad": 20, "integrated_gradients": 20, "kernelshap_semantic": 200, "kernelshap_cubes": 1000}
FULL = {"size": 288, "feature_size": 48, "depths": (2, 2, 2, 2), "roi": 96, "norm": "instance", "measured": {
    "smoothgrad": 2, "integrated_gradients": 2, "kernelshap_semantic": 40, "kernelshap_cubes": 512}, "cubes_per_axis": 8}
# tiny: group norm (instance norm needs more than one voxel at the 1/32 bottleneck, i.e. windows of 64^3 or more)
TINY = {"size": 56, "feature_size": 12, "depths": (1, 1, 1, 1), "roi": 32, "norm": "group", "measured": {
    "smoothgrad": 2, "integrated_gradients": 2, "kernelshap_semantic": 20, "kernelshap_cubes": 10}, "cubes_per_axis": 2}
NUM_CLASSES = 17


def synthetic_scan(size: int, spacing: float = 1.5, seed: int = 0) -> torch.Tensor:
    """``[1, size, size, size]`` synthetic thorax CT (HU clipped to [-1000, 1000], scaled to [0, 1])."""
    from agg2exp_lightning.data.phantom import generate_subject

    hu = generate_subject(np.random.default_rng(seed), (size, size, size), spacing)[0].astype(np.float32)
    return torch.from_numpy((np.clip(hu, -1000, 1000) + 1000) / 2000)[None]


def build_model(feature_size: int, depths: tuple[int, ...], norm: str, device: torch.device) -> torch.nn.Module:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    norm_name: Any = ("group", {"num_groups": 3}) if norm == "group" else norm
    return SwinUNETR(in_channels=1, out_channels=NUM_CLASSES, feature_size=feature_size, depths=depths,
                     use_v2=True, norm_name=norm_name).to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Any) -> tuple[Any, float, float]:
    """``(result, seconds, peak MiB)``; the peak is CUDA's max allocated (NaN on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return out, seconds, peak


def extrapolate(method: str, measured_s: float, n_measured: int, n_paper: int, fixed_s: float) -> float:
    """Seconds at the paper's sample count from a run with ``n_measured`` samples.

    ``fixed_s`` is the cost that does not grow with the samples (the prediction, and for IG and
    KernelSHAP the baseline pass): ``fixed + (measured - fixed) * n_paper / n_measured``.
    """
    if n_measured == n_paper:
        return measured_s
    return fixed_s + max(measured_s - fixed_s, 0.0) * n_paper / n_measured


def run_pytest_gpu(budget_s: float) -> str:
    """``pytest -m gpu`` in a subprocess: its summary line."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    env = dict(os.environ, WANDB_MODE="disabled")
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {budget_s:.0f} s"
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)]
    return (lines[-1].strip("= ") if lines else f"exit {out.returncode}") + ("" if out.returncode in (0, 5) else " (FAILED)")


def run_bench_metrics(device: str, tiny: bool, budget_s: float) -> list[str]:
    """``bench_metrics.py`` in a subprocess: its table lines (or why there are none)."""
    cmd = [sys.executable, str(HERE / "bench_metrics.py"), "--device", device]
    if tiny:
        cmd += ["--size", "16", "--runs", "3", "--subset-size", "64", "--targets", "2", "--samples", "1"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s)
    except subprocess.TimeoutExpired:
        return [f"metrics benchmark timed out after {budget_s:.0f} s"]
    if out.returncode != 0:
        return [f"metrics benchmark failed (exit {out.returncode}): {(out.stderr.strip().splitlines() or [''])[-1]}"]
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


def explain_rows(args: argparse.Namespace, device: torch.device, cfg: dict[str, Any], deadline: float) -> tuple[str, list[dict[str, Any]]]:
    """Time every method (and, where ``explain`` has ``precision``, the gradient methods in bf16/fp16)."""
    from bench_explain import shift_biases_until_all_predicted  # beside this script

    from agg2exp_lightning.explain import explain, explanation_mode, get_method
    from agg2exp_lightning.explain._sliding_window import blended_logits, window_plan

    size, roi = cfg["size"], cfg["roi"]
    image = synthetic_scan(size).to(device)
    model = build_model(cfg["feature_size"], cfg["depths"], cfg["norm"], device)
    window = dict(roi_size=(roi,) * 3, sw_batch_size=args.sw_batch_size, overlap=0.25, mode="gaussian")
    plan = window_plan((size,) * 3, (roi,) * 3, sw_batch_size=args.sw_batch_size, overlap=(0.25,) * 3, mode="gaussian",
                       sigma_scale=(0.125,) * 3, device=device)
    with explanation_mode(model), torch.no_grad():
        blended_logits(model, image[None], plan)  # warm-up (kernel selection)
        logits, pred_s, _ = _timed(device, lambda: blended_logits(model, image[None], plan))
        present = shift_biases_until_all_predicted(model, logits)
    del logits
    header = (f"Swin-UNETR v2 feature_size {cfg['feature_size']}, depths {cfg['depths']}, {cfg['norm']} norm, random init ({present}/17 classes predicted), "
              f"synthetic scan {size}^3 at 1.5 mm, windows {roi}^3 x {plan.num_windows} (overlap 0.25, gaussian, sw_batch_size "
              f"{args.sw_batch_size}), {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
              f"torch {torch.__version__}; one blended prediction {pred_s:.2f} s")
    print(header, flush=True)
    has_precision = "precision" in inspect.signature(explain).parameters
    runs: list[tuple[str, str]] = [(m, "fp32") for m in args.methods]
    if has_precision and device.type == "cuda":
        runs += [(m, p) for m in ("vanilla_gradient", "smoothgrad") if m in args.methods for p in ("bf16", "fp16")]
    rows = []
    for method, precision in runs:
        row: dict[str, Any] = {"method": method, "precision": precision, "paper": PAPER_SECONDS[method]}
        if time.perf_counter() > deadline:
            rows.append(row | {"note": "skipped (time budget)"})
            continue
        n_meas = cfg["measured"].get(method)
        opts: dict[str, Any] = {"batch_size": args.batch_size}
        if method in ("smoothgrad", "kernelshap_semantic", "kernelshap_cubes"):
            opts["n_samples"] = n_meas
        if method == "integrated_gradients":
            opts["n_steps"] = n_meas
        if get_method(method).cost == "perturbation":  # the method table's KernelSHAP rows
            opts["seed"] = 0
        if method == "kernelshap_cubes":
            opts["cubes_per_axis"] = cfg["cubes_per_axis"]
        if has_precision:
            opts["precision"] = precision
        try:
            res, secs, peak = _timed(device, lambda: explain(model, image, method=method, keep_attributions=False, **window, **opts))  # noqa: B023
        except KeyboardInterrupt:  # gpu_check.sh's time limit (SIGINT): print what was measured
            rows.append(row | {"note": "interrupted (time limit)"})
            break
        except Exception as err:  # report and go on with the next method
            rows.append(row | {"note": f"failed: {type(err).__name__}: {str(err)[:120]}"})
            continue
        fixed = pred_s * (1 + (method != "vanilla_gradient" and method != "smoothgrad"))  # prediction (+ baseline pass)
        n_paper = PAPER_SETTINGS.get(method, 1)
        total = extrapolate(method, secs, n_meas or 1, n_paper, fixed)
        per_class = total / NUM_CLASSES
        d = res.diagnostics
        rows.append(row | {
            "measured": f"{secs:.1f} s ({'n=' + str(n_meas) if n_meas else 'all'})",
            "per_class": per_class,
            "mark": "*" if n_meas and n_meas != n_paper else "",
            "target": PAPER_SECONDS[method] / 10,
            "speedup": PAPER_SECONDS[method] / per_class,
            "peak": peak,
            "passes": f"{d['forward_samples']}F/{d['backward_passes']}B" + (f", {d['kernelshap_window_passes_saved']} saved"
                                                                          if "kernelshap_window_passes_saved" in d else ""),
        })
        print(rows[-1], flush=True)
    return header, rows


def table(header: str, rows: list[dict[str, Any]], tests: str, metrics: list[str], total_s: float, command: str) -> str:
    lines = [f"# GPU check\n\nCommand: `{command}` ({total_s:.0f} s in all)\n\n{header}.\n",
             "| method | precision | measured | s per class and scan | paper s | target (paper / 10) | vs paper | peak GPU MiB | passes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "per_class" not in r:
            lines.append(f"| {r['method']} | {r['precision']} | {r.get('note', '')} | | {r['paper']:.0f} | {r['paper'] / 10:.1f} | | | |")
            continue
        ok = "met" if r["per_class"] <= r["target"] else "NOT met"
        lines.append(f"| {r['method']} | {r['precision']} | {r['measured']} | {r['per_class']:.2f}{r['mark']} | {r['paper']:.0f} "
                     f"| {r['target']:.1f} ({ok}) | {r['speedup']:.1f}x | {r['peak']:.0f} | {r['passes']} |")
    lines.append("\n`*` extrapolated to the paper's settings (SmoothGrad 20 samples, IG 20 steps, KernelSHAP 200 semantic / "
                 "1000 cube coalitions) from the measured run; KernelSHAP's extrapolation is an upper bound.\n")
    lines.append(f"GPU-vs-CPU equality tests (`pytest -m gpu`): {tests}\n")
    lines.append("Metrics benchmark (`benchmarks/bench_metrics.py`):\n")
    lines += ["    " + m for m in metrics]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny model and scan (dry run of every piece, e.g. on CPU)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip stages that would start later than this")
    parser.add_argument("--size", type=int, default=None, help="scan voxels a side (default 288; tiny 56)")
    parser.add_argument("--batch-size", type=int, default=4, help="input samples per pass")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per pass")
    parser.add_argument("--methods", nargs="+", choices=tuple(PAPER_SECONDS), metavar="METHOD",
                        default=["vanilla_gradient", "kernelshap_semantic", "smoothgrad", "integrated_gradients", "kernelshap_cubes"],
                        help="methods to time, in this order (default: all five, cheapest first)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    parser.add_argument("--skip-metrics", action="store_true", help="do not run the metrics benchmark")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/gpu_check.md (tiny: gpu_check_tiny.md)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing measured. "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch (make install TORCH_INDEX_URL=...), "
              "or try the pieces with --tiny --device cpu.")
        return 0
    if args.device == "cpu" and not args.tiny:
        parser.error("argument --device cpu: the paper-scale run needs a GPU; add --tiny for a CPU dry run")
    device = torch.device(args.device)
    cfg = dict(TINY if args.tiny else FULL)
    if args.size is not None:
        cfg["size"] = args.size
    out = args.out or HERE / "results" / ("gpu_check_tiny.md" if args.tiny else "gpu_check.md")
    deadline = start + args.budget_s
    tests = "not run (--skip-tests)" if args.skip_tests else run_pytest_gpu(max(30.0, 0.25 * args.budget_s))
    print(f"pytest -m gpu: {tests}", flush=True)
    metrics = ["not run (--skip-metrics)"] if args.skip_metrics else run_bench_metrics(args.device, args.tiny, max(30.0, 0.2 * args.budget_s))
    print("\n".join(metrics), flush=True)
    header, rows = explain_rows(args, device, cfg, deadline)
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = table(header, rows, tests, metrics, time.perf_counter() - start, command.strip())
    text = hardware_line() + "\n\n" + text
    print("\n" + text)
    atomic_write_text(out, text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

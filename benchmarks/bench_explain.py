"""Explain one volume for all 17 classes with each method: ours vs a Captum loop vs the pass-count limit.

Usage:
    python benchmarks/bench_explain.py            # paper defaults (long on a 2-core CPU)
    python benchmarks/bench_explain.py --quick    # small n, Captum timed on 2 classes

Model: MONAI Swin-UNETR, feature_size 12, depths (1, 1, 1, 1), random init (seed 0), on a
synthetic thorax phantom (``generate_subject``, 64^3 at 5 mm, HU clipped to [-1000, 1000] and
scaled to [0, 1]). The final layer's biases are shifted (a few no-grad passes before timing) until
all 17 classes appear in the prediction, so no method gains from classes absent from the mask.

Columns:
    ours: ``explain(...)`` wall time and peak memory.
    Captum loop: the same settings through Captum (Saliency, NoiseTunnel(Saliency) smoothgrad,
        IntegratedGradients, KernelShap with the same feature masks), one ``attribute`` call per
        class on the same proxy (mask from one extra no-grad pass, counted), with the model in
        eval mode and its parameters frozen as ours runs. When fewer than 17 classes are timed
        (``--captum-classes``, ``--captum-ks-classes``) the total is extrapolated linearly:
        mask pass + 17 x (mean seconds per class), marked with ``*``.
    limit: the pass-count limit of our run: its forward and backward passes (from the result's
        diagnostics) times the median cost of one pass of that kind and batch size, measured
        beforehand in the same process.
    memory: peak resident set size (RSS) during the call minus the RSS just before it, sampled
        every 5 ms from /proc/self/statm in a background thread (tracemalloc does not see torch's
        CPU allocations). Allocations shorter than 5 ms may be missed.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agg2exp_lightning.explain import cube_feature_mask, explain, explanation_mode, proxy_output

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Context manager: ``.peak_mib`` = max RSS during the block minus RSS at its start."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.peak_mib = (self.peak - self.start) / 2**20


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(result, seconds, peak MiB)`` of one call."""
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, seconds, mem.peak_mib


def build(size: int, feature_size: int, norm: str) -> tuple[torch.nn.Module, torch.Tensor]:
    from monai.networks.nets import SwinUNETR

    from agg2exp_lightning.data.phantom import generate_subject

    torch.manual_seed(0)
    norm_name: Any = ("group", {"num_groups": 3}) if norm == "group" else "instance"
    model = SwinUNETR(in_channels=1, out_channels=17, feature_size=feature_size, depths=(1, 1, 1, 1), norm_name=norm_name).eval()
    hu = generate_subject(np.random.default_rng(0), (size, size, size), 320.0 / size)[0].astype(np.float32)
    image = torch.from_numpy((np.clip(hu, -1000, 1000) + 1000) / 2000)[None]
    head = model.out.conv.conv if hasattr(model.out.conv, "conv") else model.out.conv
    with torch.no_grad():
        for _ in range(30):  # shift biases until every class is predicted somewhere
            logits = model(image[None])[0]
            counts = torch.bincount(logits.argmax(0).flatten(), minlength=17)
            if (counts > 0).all():
                break
            gap = (logits.max(0).values - logits).flatten(1).quantile(0.02, dim=1)  # logit deficit of each class
            head.bias += torch.where(counts == 0, gap + 0.05, torch.zeros_like(gap)) - 0.01 * (counts > counts.median())
    return model, image


def pass_costs(model: torch.nn.Module, image: torch.Tensor, batches: list[int], reps: int) -> dict[str, float]:
    """Median seconds of one no-grad forward, one forward with grad and one backward per batch size."""
    costs: dict[str, float] = {}
    with explanation_mode(model):
        for b in sorted(set(batches)):
            x = image[None].repeat(b, 1, 1, 1, 1)
            ng, fg, bw = [], [], []
            for _ in range(reps):
                with torch.no_grad():
                    t = time.perf_counter()
                    model(x)
                    ng.append(time.perf_counter() - t)
                xi = x.clone().requires_grad_(True)
                t = time.perf_counter()
                out = model(xi)
                fg.append(time.perf_counter() - t)
                cot = torch.zeros_like(out)
                cot[:, 3] = 1.0
                t = time.perf_counter()
                torch.autograd.grad(out, xi, cot, retain_graph=True)
                bw.append(time.perf_counter() - t)
                del out, cot
            costs[f"Fng{b}"], costs[f"Fg{b}"], costs[f"B{b}"] = map(statistics.median, (ng, fg, bw))
    return costs


def limit_seconds(method: str, diag: dict[str, Any], c: dict[str, float], bs: int, n: int) -> float:
    """Pass-count limit of our run (the counts from its diagnostics)."""
    full, rest = divmod(n, bs)
    if method == "vanilla_gradient":
        assert diag["forward_passes"] == 1
        return c["Fg1"] + diag["backward_passes"] * c["B1"]
    if method in ("smoothgrad", "integrated_gradients"):
        extra_ng = 1 + (method == "integrated_gradients")  # prediction (+ IG baseline)
        assert diag["forward_passes"] == extra_ng + full + (rest > 0)
        batches = full + (rest > 0)
        per_b = diag["backward_passes"] / batches  # backward passes per batch (= targets present)
        return extra_ng * c["Fng1"] + full * (c[f"Fg{bs}"] + per_b * c[f"B{bs}"]) + (rest > 0) * (c[f"Fg{rest}"] + per_b * c[f"B{rest}"])
    samples = diag["kernelshap_samples"]
    full, rest = divmod(samples, bs)
    return 2 * c["Fng1"] + full * c[f"Fng{bs}"] + (rest > 0) * c[f"Fng{rest}"]


def captum_loop(method: str, model, image, labels, opts: dict[str, Any], classes: list[int], bs: int) -> list[float]:
    """Seconds per class of the Captum equivalent (model frozen and in eval mode, as ours)."""
    from captum.attr import IntegratedGradients, KernelShap, NoiseTunnel, Saliency

    f = lambda x: proxy_output(model(x), labels, list(range(17)))  # noqa: E731
    x = image[None]
    per_class = []
    with explanation_mode(model):
        for c in classes:
            t = time.perf_counter()
            if method == "vanilla_gradient":
                Saliency(f).attribute(x, target=c, abs=False)
            elif method == "smoothgrad":
                sigma = 0.1 * float(image.max() - image.min())
                NoiseTunnel(Saliency(f)).attribute(x, nt_type="smoothgrad", nt_samples=opts["n_samples"], nt_samples_batch_size=bs,
                                                   stdevs=sigma, target=c, abs=False)
            elif method == "integrated_gradients":
                IntegratedGradients(f).attribute(x, baselines=0.0, target=c, n_steps=opts["n_steps"], method="gausslegendre",
                                                 internal_batch_size=bs)
            else:
                if method == "kernelshap_cubes":
                    mask = cube_feature_mask(tuple(image.shape[1:]), opts.get("cubes_per_axis", 8))[0]
                else:
                    mask = torch.unique(labels, return_inverse=True)[1]
                KernelShap(f).attribute(x, baselines=0.0, target=c, feature_mask=mask[None, None], n_samples=opts["n_samples"],
                                        perturbations_per_eval=bs)
            per_class.append(time.perf_counter() - t)
    return per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small n, Captum timed on 2 classes")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--feature-size", type=int, default=12)
    parser.add_argument("--norm", choices=("instance", "group"), default="instance")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per forward pass (ours and Captum)")
    parser.add_argument("--captum-classes", type=int, default=None, help="classes timed for the Captum gradient loops (default 17; quick 2)")
    parser.add_argument("--captum-ks-classes", type=int, default=None, help="classes timed for Captum KernelShap (default 1)")
    parser.add_argument("--methods", nargs="+", default=["vanilla_gradient", "smoothgrad", "integrated_gradients", "kernelshap_cubes", "kernelshap_semantic"])
    parser.add_argument("--vectorize", action="store_true", help="also time the vmapped backward (is_grads_batched) for VG")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the unit pass costs")
    parser.add_argument("--out", type=Path, default=None, help="default results/explain_cpu.md (quick: explain_cpu_quick.md)")
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(__file__).parent / "results" / ("explain_cpu_quick.md" if args.quick else "explain_cpu.md")
    bs = args.batch_size
    settings = {
        "vanilla_gradient": {},
        "smoothgrad": {"n_samples": 4 if args.quick else 20},
        "integrated_gradients": {"n_steps": 4 if args.quick else 20},
        "kernelshap_cubes": {"n_samples": 80, "cubes_per_axis": 4} if args.quick else {"n_samples": 1000},
        "kernelshap_semantic": {"n_samples": 40 if args.quick else 200},
    }
    grad_classes = args.captum_classes or (2 if args.quick else 17)
    ks_classes = args.captum_ks_classes or (2 if args.quick else 1)

    model, image = build(args.size, args.feature_size, args.norm)
    with torch.no_grad():
        labels = model(image[None]).argmax(1)[0]
    present = int(torch.unique(labels).numel())
    header = (f"Swin-UNETR feature_size {args.feature_size}, depths (1,1,1,1), {args.norm} norm, {args.size}^3, 17 classes "
              f"({present} present in the prediction), torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"batch_size {bs}{', QUICK settings' if args.quick else ''}")
    print(header, flush=True)
    costs = pass_costs(model, image, [1, bs] + [n % bs for n in (20, 4, 1000, 200, 80, 40) if n % bs], args.reps)
    print("unit pass costs (s): " + ", ".join(f"{k}={v:.3f}" for k, v in costs.items()), flush=True)
    mask_s = costs["Fng1"]

    rows = []
    runs = [(m, False) for m in args.methods] + ([("vanilla_gradient", True)] if args.vectorize else [])
    for method, vec in runs:
        opts = dict(settings[method])
        if method in ("vanilla_gradient", "smoothgrad", "integrated_gradients"):
            opts |= {"batch_size": bs, "vectorize": vec}
        else:
            opts |= {"batch_size": bs, "seed": 0}
        res, ours_s, ours_mb = timed(lambda: explain(model, image, method=method, keep_attributions=False, **opts))  # noqa: B023
        n = opts.get("n_samples", opts.get("n_steps", 1))
        limit = limit_seconds(method, res.diagnostics, costs, bs, n)
        passes = f"{res.diagnostics['forward_samples']}F/{res.diagnostics['backward_passes']}B"
        name = method + (" (vectorize)" if vec else "")
        if vec:
            cap_s, cap_mb, mark = float("nan"), float("nan"), ""
        else:
            k = ks_classes if method.startswith("kernelshap") else grad_classes
            classes = list(range(17))[:k]
            per_class, _, cap_mb = timed(lambda: captum_loop(method, model, image, labels, opts, classes, bs))  # noqa: B023
            cap_s = mask_s + 17 * statistics.mean(per_class) if k < 17 else mask_s + sum(per_class)
            mark = "*" if k < 17 else ""
        row = (name, ", ".join(f"{k}={v}" for k, v in settings[method].items()) or "-", ours_s, ours_mb, cap_s, mark, cap_mb,
               cap_s / ours_s, limit, ours_s / limit, passes)
        rows.append(row)
        print(" | ".join(str(r) if not isinstance(r, float) else f"{r:.3g}" for r in row), flush=True)

    lines = [
        f"# Explanation engine on CPU\n\n{header}.\n",
        "Command: `python benchmarks/bench_explain.py" + (" --quick" if args.quick else "") + "`\n",
        f"Unit pass costs (median of {args.reps}, s): " + ", ".join(f"{k}={v:.3f}" for k, v in costs.items()) + "\n",
        "| method | settings | ours s | ours peak MiB | Captum loop s | Captum peak MiB | speed-up | pass limit s | ours / limit | passes (samples F / B) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, sett, o_s, o_mb, c_s, mark, c_mb, sp, lim, ratio, passes in rows:
        lines.append(f"| {name} | {sett} | {o_s:.1f} | {o_mb:.0f} | {c_s:.1f}{mark} | {c_mb:.0f} | {sp:.2f}x | {lim:.1f} | {ratio:.2f} | {passes} |")
    lines.append(f"\n`*` Captum timed on {grad_classes} (gradient methods) / {ks_classes} (KernelSHAP) of the 17 classes and "
                 "extrapolated linearly: mask pass + 17 x mean seconds per class.\n"
                 "Memory: peak RSS minus RSS before the call, sampled every 5 ms from /proc/self/statm.\n")
    table = "\n".join(lines)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

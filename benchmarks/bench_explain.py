"""Explain one volume for all 17 classes with each method: ours vs a Captum loop vs the pass-count limit.

Usage:
    python benchmarks/bench_explain.py            # paper defaults (long on a 2-core CPU)
    python benchmarks/bench_explain.py --quick    # small n, Captum timed on 2 classes

Model: MONAI Swin-UNETR, feature_size 12, depths (1, 1, 1, 1), random init (seed 0), on a
synthetic thorax phantom (``generate_subject``, 64^3 at 5 mm, HU clipped to [-1000, 1000] and
scaled to [0, 1]). The final layer's biases are shifted (on the logits of one no-grad prediction,
before timing) until all 17 classes appear in the prediction, so no method gains from classes absent
from the mask. ``--windows N`` explains a volume of N x N x N sliding windows of ``--roi`` voxels
instead (Captum's proxy then runs on MONAI's ``sliding_window_inference``; ``--no-reuse`` also times
KernelSHAP without window reuse).

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
    time: wall seconds and process CPU seconds (``time.process_time``). The machine is shared
        with other jobs: with 2 threads a pass varied 0.2-1.2 s from one call to the next (OpenMP
        threads spin while they wait for each other, so even CPU time inflated), with 1 thread it
        held within a few percent. So the default is ``--threads 1``, and speed-ups and the ratio
        to the limit use CPU seconds (wall ratios printed too).
    memory: peak resident set size (RSS) during the call minus the RSS just before it, sampled
        every 5 ms from /proc/self/statm in a background thread (tracemalloc does not see torch's
        CPU allocations). Allocations shorter than 5 ms may be missed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agg2exp_lightning.explain import explain, explanation_mode, get_method, proxy_output
from agg2exp_lightning.explain._kernelshap import cube_feature_mask
from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line

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


class Clock:
    """Wall and process-CPU seconds of a block: ``.wall``, ``.cpu``."""

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


def timed(fn: Callable[[], Any]) -> tuple[Any, Clock, float]:
    """``(result, clock, peak MiB)`` of one call."""
    with PeakRSS() as mem, Clock() as clock:
        out = fn()
    return out, clock, mem.peak_mib


def shift_biases_until_all_predicted(model: torch.nn.Module, logits: torch.Tensor, rounds: int = 30) -> int:
    """Shift the final layer's biases until every class is the argmax somewhere; returns the classes predicted.

    ``logits`` ``[1, C, *S]`` are the model's (blended) prediction of the benchmark scan. A bias change
    moves them by exactly that change (sliding-window blending weights sum to 1), so the loop works on
    these logits instead of predicting again.
    """
    head = model.out.conv.conv if hasattr(model.out.conv, "conv") else model.out.conv
    flat = logits[0].flatten(1)  # [C, V]
    shift = torch.zeros(flat.shape[0], device=flat.device, dtype=flat.dtype)
    step = max(1, flat.shape[1] // 300_000)
    for _ in range(rounds):
        shifted = flat + shift[:, None]
        counts = torch.bincount(shifted.argmax(0), minlength=flat.shape[0])
        if bool((counts > 0).all()):
            break
        sub = shifted[:, ::step]
        gap = (sub.max(0).values - sub).quantile(0.02, dim=1)  # logit deficit of each class
        shift += torch.where(counts == 0, gap + 0.05, torch.zeros_like(gap)) - 0.01 * (counts > counts.median())
    with torch.no_grad():
        head.bias += shift.to(head.bias.dtype)
    return int((torch.bincount((flat + shift[:, None]).argmax(0), minlength=flat.shape[0]) > 0).sum())


def build(size: int, feature_size: int, norm: str, plan: Any = None) -> tuple[torch.nn.Module, torch.Tensor]:
    from monai.networks.nets import SwinUNETR

    from agg2exp_lightning.data.phantom import generate_subject
    from agg2exp_lightning.explain._sliding_window import blended_logits

    torch.manual_seed(0)
    norm_name: Any = ("group", {"num_groups": 3}) if norm == "group" else "instance"
    model = SwinUNETR(in_channels=1, out_channels=17, feature_size=feature_size, depths=(1, 1, 1, 1), norm_name=norm_name).eval()
    hu = generate_subject(np.random.default_rng(0), (size, size, size), 320.0 / size)[0].astype(np.float32)
    image = torch.from_numpy((np.clip(hu, -1000, 1000) + 1000) / 2000)[None]
    with torch.no_grad():
        logits = model(image[None]) if plan is None else blended_logits(model, image[None], plan)
    shift_biases_until_all_predicted(model, logits)
    return model, image


class PassCosts:
    """Median wall and CPU seconds of one pass, measured on first use and cached.

    Kinds: ``Fng`` (forward without grad), ``Fg`` (forward with grad), ``B`` (one backward with
    ``retain_graph`` w.r.t. the input, a one-class cotangent, timed as the 2nd, 3rd, ... backward
    through one graph, as the methods run them), each at a batch size. Every measurement follows
    one untimed warm-up of the same shape (oneDNN builds its kernels for a new shape on first
    use), with the model frozen in eval mode as ``explain`` runs it.
    """

    def __init__(self, model: torch.nn.Module, image: torch.Tensor, reps: int) -> None:
        self.model, self.image, self.reps = model, image, reps
        self.cache: dict[tuple[str, int], Clock] = {}

    def _measure(self, b: int) -> None:
        x = self.image[None].repeat(b, 1, 1, 1, 1)
        found: dict[str, list[Clock]] = {"Fng": [], "Fg": [], "B": []}
        with explanation_mode(self.model):
            for rep in range(self.reps + 1):  # rep 0 warms up
                with torch.no_grad(), Clock() as c_ng:
                    self.model(x)
                xi = x.clone().requires_grad_(True)
                with Clock() as c_fg:
                    out = self.model(xi)
                if rep:
                    found["Fng"].append(c_ng), found["Fg"].append(c_fg)
            # backward: as the methods run it, several cotangents through one retained graph
            for rep in range(self.reps + 1):
                cot = torch.zeros_like(out)
                cot[:, rep % out.shape[1]] = 1.0
                with Clock() as c_b:
                    torch.autograd.grad(out, xi, cot, retain_graph=True)
                if rep:
                    found["B"].append(c_b)
            del out
        for kind, clocks in found.items():
            med = Clock()
            med.wall = statistics.median(c.wall for c in clocks)
            med.cpu = statistics.median(c.cpu for c in clocks)
            self.cache[(kind, b)] = med

    def __call__(self, kind: str, b: int, clock: str) -> float:
        if b == 0:
            return 0.0
        if (kind, b) not in self.cache:
            self._measure(b)
        return getattr(self.cache[(kind, b)], clock)

    def summary(self) -> str:
        return "; ".join(f"{k}{b}={c.cpu:.2f}/{c.wall:.2f}" for (k, b), c in sorted(self.cache.items(), key=lambda i: (i[0][1], i[0][0])))


def _perturbation(method: str) -> bool:
    """Whether the method table costs ``method`` as forward passes only (KernelSHAP)."""
    return get_method(method).cost == "perturbation"


def limit_seconds(method: str, diag: dict[str, Any], cost: PassCosts, bs: int, n: int, clock: str, plan: Any = None) -> float:
    """Pass-count limit of our run (the counts from its diagnostics), in ``clock`` seconds.

    With windows (``plan``) the unit is a pass of ``sw_batch_size`` windows; the forward samples
    and backward passes of the run are costed at that batch (a last, smaller chunk pro rata).
    """
    if plan is not None:
        swb, w = plan.sw_batch_size, plan.num_windows
        if _perturbation(method):
            return diag["forward_samples"] / swb * cost("Fng", swb, clock)
        ng = w * (1 + (method == "integrated_gradients"))  # prediction (+ IG baseline), without grad
        return (ng / swb * cost("Fng", swb, clock) + (diag["forward_samples"] - ng) / swb * cost("Fg", swb, clock)
                + diag["backward_passes"] * cost("B", swb, clock))
    if method == "vanilla_gradient":  # (with vectorize: the limit of the loop it replaces)
        if diag["forward_passes"] != 1:
            raise RuntimeError(f"unexpected pass counts {diag}")
        return cost("Fg", 1, clock) + (17 - len(diag["targets_absent"])) * cost("B", 1, clock)
    if method in ("smoothgrad", "integrated_gradients"):
        full, rest = divmod(n, bs)
        extra_ng = 1 + (method == "integrated_gradients")  # prediction (+ IG baseline)
        batches = full + (rest > 0)
        if diag["forward_passes"] != extra_ng + batches:
            raise RuntimeError(f"unexpected pass counts {diag}")
        per_batch = diag["backward_passes"] / batches  # backward passes per batch (= targets present)
        return (extra_ng * cost("Fng", 1, clock) + full * (cost("Fg", bs, clock) + per_batch * cost("B", bs, clock))
                + cost("Fg", rest, clock) + (per_batch * cost("B", rest, clock) if rest else 0.0))
    full, rest = divmod(diag["kernelshap_samples"], bs)
    return 2 * cost("Fng", 1, clock) + full * cost("Fng", bs, clock) + cost("Fng", rest, clock)


def captum_loop(method: str, model, image, labels, opts: dict[str, Any], classes: list[int], bs: int, window: dict | None = None) -> list[Clock]:
    """Clock per class of the Captum equivalent (model frozen and in eval mode, as ours).

    With ``window`` the proxy is computed on MONAI's ``sliding_window_inference`` with those settings.
    """
    from captum.attr import IntegratedGradients, KernelShap, NoiseTunnel, Saliency
    from monai.inferers import sliding_window_inference

    if window is None:
        f = lambda x: proxy_output(model(x), labels, list(range(17)))  # noqa: E731
    else:
        def f(x: torch.Tensor) -> torch.Tensor:
            logits = sliding_window_inference(x, window["roi_size"], window["sw_batch_size"], model, overlap=window["overlap"], mode=window["mode"])
            return proxy_output(logits, labels, list(range(17)))
    x = image[None]
    if method == "kernelshap_cubes":
        mask = cube_feature_mask(tuple(image.shape[1:]), opts.get("cubes_per_axis", 8))[0]
    else:
        mask = torch.unique(labels, return_inverse=True)[1]
    sigma = 0.1 * float(image.max() - image.min())
    per_class = []
    with explanation_mode(model):
        for c in classes:
            with Clock() as clock:
                if method == "vanilla_gradient":
                    Saliency(f).attribute(x, target=c, abs=False)
                elif method == "smoothgrad":
                    NoiseTunnel(Saliency(f)).attribute(x, nt_type="smoothgrad", nt_samples=opts["n_samples"], nt_samples_batch_size=bs,
                                                       stdevs=sigma, target=c, abs=False)
                elif method == "integrated_gradients":
                    IntegratedGradients(f).attribute(x, baselines=0.0, target=c, n_steps=opts["n_steps"], method="gausslegendre",
                                                     internal_batch_size=bs)
                else:
                    KernelShap(f).attribute(x, baselines=0.0, target=c, feature_mask=mask[None, None], n_samples=opts["n_samples"],
                                            perturbations_per_eval=bs)
            per_class.append(clock)
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
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable timings on a shared machine)")
    parser.add_argument("--windows", type=int, default=None,
                        help="sliding windows per axis: the volume becomes roi + (windows - 1) x the window step (--size ignored)")
    parser.add_argument("--roi", type=int, default=32, help="window size with --windows (Swin-UNETR needs a multiple of 32)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap with --windows")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per pass with --windows")
    parser.add_argument("--no-reuse", action="store_true", help="KernelSHAP: also time without window reuse (reuse_windows=False)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default results/explain_cpu.md (quick: explain_cpu_quick.md; windows: explain_cpu_windows<N>.md)")
    args = parser.parse_args()
    if args.windows is not None and args.norm == "instance" and args.roi < 64:
        parser.error("argument --roi: instance norm needs windows of 64^3 or more (Swin-UNETR's 1/32 bottleneck); use --norm group")
    if args.windows is not None:
        args.size = args.roi + (args.windows - 1) * max(int(args.roi * (1 - args.overlap)), 1)
    if args.out is None:
        stem = "explain_cpu" + (f"_windows{args.windows}" if args.windows else "") + ("_quick" if args.quick else "")
        args.out = Path(__file__).parent / "results" / f"{stem}.md"
    torch.set_num_threads(args.threads)
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

    plan, window = None, {}
    if args.windows is not None:
        from agg2exp_lightning.explain._sliding_window import blended_logits, window_plan

        window = dict(roi_size=(args.roi,) * 3, sw_batch_size=args.sw_batch_size, overlap=args.overlap, mode="constant")
        plan = window_plan((args.size,) * 3, (args.roi,) * 3, sw_batch_size=args.sw_batch_size, overlap=(args.overlap,) * 3)
    model, image = build(args.size, args.feature_size, args.norm, plan)
    with torch.no_grad():
        labels = (model(image[None]) if plan is None else blended_logits(model, image[None], plan)).argmax(1)[0]
    present = int(torch.unique(labels).numel())
    where = "" if plan is None else f" in {plan.num_windows} windows of {args.roi}^3 (overlap {args.overlap}, sw_batch_size {args.sw_batch_size})"
    header = (f"Swin-UNETR feature_size {args.feature_size}, depths (1,1,1,1), {args.norm} norm, {args.size}^3{where}, 17 classes "
              f"({present} present in the prediction), torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"batch_size {bs}{', QUICK settings' if args.quick else ''}")
    print(header, flush=True)
    unit_image = image if plan is None else image[(slice(None), *plan.slices[0])]  # costs of one window
    cost = PassCosts(model, unit_image, args.reps)
    b0 = bs if plan is None else args.sw_batch_size
    cost("Fng", 1, "cpu"), cost("Fng", b0, "cpu")  # the common sizes first
    print(f"unit pass costs (CPU s / wall s): {cost.summary()}", flush=True)

    rows = []
    runs = [(m, "") for m in args.methods] + ([("vanilla_gradient", "vectorize")] if args.vectorize else [])
    if args.no_reuse and plan is not None:
        runs += [(m, "no reuse") for m in args.methods if _perturbation(m)]
    mask_pass = {kind: (cost("Fng", 1, kind) if plan is None else plan.num_windows / b0 * cost("Fng", b0, kind)) for kind in ("cpu", "wall")}
    for method, variant in runs:
        opts = dict(settings[method])
        if method in ("vanilla_gradient", "smoothgrad", "integrated_gradients"):
            opts |= {"batch_size": bs, "vectorize": variant == "vectorize"}
        else:
            opts |= {"batch_size": bs, "seed": 0} | ({"reuse_windows": False} if variant == "no reuse" else {})
        res, ours, ours_mb = timed(lambda: explain(model, image, method=method, keep_attributions=False, **window, **opts))  # noqa: B023
        n = opts.get("n_samples", opts.get("n_steps", 1))
        limit = {kind: limit_seconds(method, res.diagnostics, cost, bs, n, kind, plan) for kind in ("cpu", "wall")}
        d = res.diagnostics
        passes = f"{d['forward_samples']}F/{d['backward_passes']}B" + (f" ({d['kernelshap_window_passes_saved']} window passes saved)"
                                                                     if d.get("kernelshap_window_passes_saved") else "")
        if plan is not None and _perturbation(method):  # every coalition (and the baseline) through every window
            naive = dict(d, forward_samples=plan.num_windows * (d["kernelshap_samples"] + 2))
            limit["naive_cpu"] = limit_seconds(method, naive, cost, bs, n, "cpu", plan)
        name = method + (f" ({variant})" if variant else "")
        nan = float("nan")
        cap, cap_mb, mark = {"cpu": nan, "wall": nan}, nan, ""
        if not variant:
            k = ks_classes if _perturbation(method) else grad_classes
            classes = list(range(17))[:k]
            per_class, _, cap_mb = timed(lambda: captum_loop(method, model, image, labels, opts, classes, bs, window or None))  # noqa: B023
            for kind in ("cpu", "wall"):
                secs = [getattr(c, kind) for c in per_class]
                cap[kind] = mask_pass[kind] + (17 * statistics.mean(secs) if k < 17 else sum(secs))  # + the mask pass
            mark = "*" if k < 17 else ""
        row = dict(method=name, settings=", ".join(f"{k}={v}" for k, v in settings[method].items()) or "-",
                   ours_cpu=ours.cpu, ours_wall=ours.wall, ours_mb=ours_mb, cap_cpu=cap["cpu"], cap_wall=cap["wall"], mark=mark,
                   cap_mb=cap_mb, speed_cpu=cap["cpu"] / ours.cpu, speed_wall=cap["wall"] / ours.wall, limit_cpu=limit["cpu"],
                   ratio_cpu=ours.cpu / limit["cpu"], ratio_wall=ours.wall / limit["wall"], passes=passes,
                   naive_cpu=limit.get("naive_cpu", nan))
        rows.append(row)
        print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    unit = cost.summary()
    lines = [
        f"# Explanation engine on CPU\n\n{header}.\n",
        "Command: `python " + " ".join(["benchmarks/bench_explain.py", *sys.argv[1:]]) + "`\n",
        f"Unit pass costs (median of {args.reps}; CPU s / wall s; F = forward, ng = no grad, g = with grad, "
        f"B = backward, digit = batch size): {unit}\n",
        "| method | settings | ours CPU s (wall) | ours peak MiB | Captum loop CPU s (wall) | Captum peak MiB "
        "| speed-up CPU (wall) | pass limit CPU s | ours / limit CPU (wall) | passes (samples F / B) |"
        + (" ours / limit without reuse CPU |" if plan is not None else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if plan is not None else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['settings']} | {r['ours_cpu']:.1f} ({r['ours_wall']:.1f}) | {r['ours_mb']:.0f} "
            f"| {r['cap_cpu']:.1f}{r['mark']} ({r['cap_wall']:.1f}{r['mark']}) | {r['cap_mb']:.0f} "
            f"| {r['speed_cpu']:.2f}x ({r['speed_wall']:.2f}x) | {r['limit_cpu']:.1f} | {r['ratio_cpu']:.2f} ({r['ratio_wall']:.2f}) | {r['passes']} |"
            + (f" {r['ours_cpu'] / r['naive_cpu']:.2f} |" if plan is not None else "")
        )
    lines.append(f"\n`*` Captum timed on {grad_classes} (gradient methods) / {ks_classes} (KernelSHAP) of the 17 classes and "
                 "extrapolated linearly: mask pass + 17 x mean seconds per class.\n"
                 + ("With windows, Captum's proxy runs on MONAI's `sliding_window_inference` (same windows); the pass limit "
                    "costs our run's window passes at sw_batch_size windows per pass; 'without reuse' is the limit of every "
                    "KernelSHAP coalition (and the baseline and prediction) through every window.\n" if plan is not None else "")
                 + "Memory: peak RSS minus RSS before the call, sampled every 5 ms from /proc/self/statm.\n")
    table = hardware_line() + "\n\n" + "\n".join(lines)
    print("\n" + table)
    atomic_write_text(args.out, table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

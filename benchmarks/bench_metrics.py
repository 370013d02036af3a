"""Our faithfulness correlation and sensitivity vs Quantus 0.6.0 computing the same values, side by side.

Usage: python benchmarks/bench_metrics.py [--size 64] [--targets 7] [--runs 100] [--subset-size 50176]
                                          [--samples 3] [--device cpu|cuda]

Model: a small seeded 3D conv net (:class:`SmallSegNet`: conv 3^3 1->8, ReLU, conv 3^3 8->8, ReLU,
conv 1^3 8->17, plus an intensity-band term so that all 17 classes are predicted); input a smoothed
random volume of size^3 in [0, 1]; targets: the most frequently predicted classes. Both sides
get the same random subsets and noise (Quantus' draws are replaced by ours), the same fixed-mask proxy
and, for sensitivity, the same vanilla-gradient explainer. Quantus is called the fastest way that gives
the same values: faithfulness with all targets in one call (x_batch of T copies, Pearson is blind to
Quantus' batch-wide max-normalisation); sensitivity one call per target (its max-normalisation is
batch-wide, which changes the values). Each measurement runs in a fresh subprocess, so its peak memory
is its own (CPU: growth of the peak resident set over the set-up; CUDA: max_memory_allocated).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from agg2exp_lightning.utils.hardware import hardware_line

CASES = ("ours_faithfulness", "quantus_faithfulness", "ours_sensitivity", "quantus_sensitivity")


class SmallSegNet(nn.Module):
    """Conv 3^3 1->8, ReLU, conv 3^3 8->8, ReLU, conv 1^3 8->17, plus an intensity-band term.

    The band term ``-50 (x - centre_c)^2`` (centres: intensity quantiles of the benchmark volume) makes
    every one of the 17 classes predicted somewhere, as in a thorax scan; a random conv net alone
    predicts two or three classes.
    """

    def __init__(self, centres: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1),
                                      nn.ReLU(), nn.Conv3d(8, 17, 1))
        self.register_buffer("centres", centres.view(1, -1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) - 50.0 * (x - self.centres) ** 2


def _net(x: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    centres = torch.quantile(x.flatten().cpu()[:: max(1, x.numel() // 100_000)], (torch.arange(17) + 0.5) / 17)
    return SmallSegNet(centres).to(x.device).eval()


def _setup(args: argparse.Namespace):
    from agg2exp_lightning.evaluation import random_subsets, uniform_noise
    from agg2exp_lightning.explain.proxy import prediction_labels, proxy_output

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((1, 1, args.size, args.size, args.size), dtype=np.float32))
    x = torch.nn.functional.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
    x = ((x - x.min()) / (x.max() - x.min())).to(device)
    net = _net(x)
    with torch.no_grad():
        labels = prediction_labels(net(x))[0]
    counts = torch.bincount(labels.flatten(), minlength=17)
    targets = [t for t in counts.argsort(descending=True)[: args.targets].tolist() if counts[t] > 0]

    def explain_fn(image: torch.Tensor, ts=targets) -> torch.Tensor:  # vanilla gradient, mask of this input
        xi = image.detach().clone().reshape(1, 1, *image.shape[-3:]).requires_grad_(True)
        logits = net(xi)
        lab = prediction_labels(logits.detach())[0]
        proxies = proxy_output(logits, lab, ts)[0]
        return torch.stack([torch.autograd.grad(p, xi, retain_graph=True)[0][0, 0] for p in proxies])

    attributions = explain_fn(x[0])
    n = args.size**3
    subsets = random_subsets(n, min(args.subset_size, n - 1), args.runs, rng=1)
    noise = uniform_noise((1, args.size, args.size, args.size), args.samples, 0.1, rng=2)
    return net, x, labels, targets, explain_fn, attributions, subsets, noise


class _Proxy(nn.Module):
    def __init__(self, net, labels, targets):
        super().__init__()
        self.net, self.labels, self.targets = net, labels, targets

    def forward(self, x):
        from agg2exp_lightning.explain.proxy import proxy_output

        return proxy_output(self.net(x), self.labels, self.targets)


def _run_case(case: str, args: argparse.Namespace) -> dict:
    import quantus

    from agg2exp_lightning.evaluation import faithfulness_correlation, sensitivity

    net, x, labels, targets, explain_fn, a, subsets, noise = _setup(args)
    device = torch.device(args.device)
    T = len(targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if case == "ours_faithfulness":
        values = faithfulness_correlation(net, x[0], a, targets, subsets=subsets, batch_size=args.batch_size).correlation
    elif case == "quantus_faithfulness":
        draws = iter(np.repeat(subsets, T, axis=0))  # Quantus draws per run, then per batch element
        np.random.choice = lambda *a_, **k: next(draws)
        metric = quantus.FaithfulnessCorrelation(nr_runs=len(subsets), subset_size=subsets.shape[1],
                                                 perturb_baseline="black", return_aggregate=False, disable_warnings=True)
        values = metric(model=_Proxy(net, labels, targets).eval(), x_batch=x.cpu().numpy().repeat(T, 0),
                        y_batch=np.arange(T), a_batch=a[:, None].cpu().numpy(), channel_first=True,
                        device=str(device), batch_size=T)
    elif case == "ours_sensitivity":
        res = sensitivity(explain_fn, x[0], a, noise=noise)
        values = torch.cat([res.average, res.maximum])
    else:
        avg, mx = [], []
        for t in range(T):
            def qexplain(model, inputs, targets, t=t, **kw):
                return explain_fn(torch.from_numpy(inputs[0]).to(device), [targets_all[t]])[None].cpu().numpy()

            targets_all = targets
            for kind, out in (("AvgSensitivity", avg), ("MaxSensitivity", mx)):
                draws = iter(noise)
                np.random.uniform = lambda *a_, **k: next(draws).reshape(1, -1)
                metric = getattr(quantus, kind)(nr_samples=len(noise), lower_bound=0.1, normalise=True,
                                                return_aggregate=False, disable_warnings=True)
                out += list(metric(model=_Proxy(net, labels, targets).eval(), x_batch=x.cpu().numpy(),
                                   y_batch=np.array([t]), a_batch=a[t][None, None].cpu().numpy(),
                                   explain_func=qexplain, channel_first=True, device=str(device)))
        values = avg + mx
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    return {"seconds": seconds, "peak_mb": peak, "values": [float(v) for v in values], "targets": targets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--targets", type=int, default=7)
    p.add_argument("--runs", type=int, default=100, help="faithfulness subsets (paper: 100)")
    p.add_argument("--subset-size", type=int, default=50_176, help="voxels per subset (paper: 50176)")
    p.add_argument("--samples", type=int, default=3, help="sensitivity noisy copies (paper: 3)")
    p.add_argument("--batch-size", type=int, default=4, help="our perturbed copies per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = p.parse_args()
    print(hardware_line(), flush=True)
    if args.case:
        print(json.dumps(_run_case(args.case, args)))
        return
    argv = [a for a in sys.argv[1:]]
    results = {}
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, *argv, "--case", case], capture_output=True, text=True, check=True)
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"size {args.size}^3, targets {results['ours_faithfulness']['targets']}, faithfulness {args.runs} runs x {args.subset_size} voxels, "
          f"sensitivity {args.samples} samples, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'metric':<14}{'ours s':>9}{'quantus s':>11}{'speed-up':>10}{'ours MB':>10}{'quantus MB':>12}{'max |diff|':>12}")
    for metric in ("faithfulness", "sensitivity"):
        o, q = results[f"ours_{metric}"], results[f"quantus_{metric}"]
        diff = float(np.max(np.abs(np.subtract(o["values"], q["values"]))))
        print(f"{metric:<14}{o['seconds']:>9.2f}{q['seconds']:>11.2f}{q['seconds'] / o['seconds']:>9.1f}x"
              f"{o['peak_mb']:>10.0f}{q['peak_mb']:>12.0f}{diff:>12.1e}")


if __name__ == "__main__":
    main()

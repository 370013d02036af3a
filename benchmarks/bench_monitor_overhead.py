"""Cost of explanation monitoring: the demo training with and without its monitors, side by side.

Runs ``train()`` twice on the same cohort with the demo config: once as configured (explanation,
anomaly and bias monitors at their demo settings) and once with the checkpoints only, and prints the
wall-time ratio. Monitors run every 8th epoch, so any multiple of 8 epochs gives the demo's ratio;
the default (8 epochs) takes about half of the demo's time per run.

    python benchmarks/bench_monitor_overhead.py [--epochs 8] [--data data/synthetic_thorax]
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from agg2exp_lightning.utils.hardware import hardware_line

ROOT = Path(__file__).resolve().parents[1]
NO_MONITORS = ROOT / "tests" / "configs" / "checkpoints_only.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--data", default=str(ROOT / "data" / "synthetic_thorax"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_monitors"))
    args = parser.parse_args()
    print(hardware_line(), flush=True)
    os.environ.setdefault("WANDB_MODE", "disabled")
    from agg2exp_lightning.training import train

    common = ["demo", f"--data.data_root={args.data}", f"--trainer.max_epochs={args.epochs}", "--resume=never",
              "--trainer.enable_progress_bar=false"]
    seconds = {}
    for name, extra in (("without monitors", ["--config", str(NO_MONITORS)]), ("with monitors", [])):
        run = Path(args.out) / name.replace(" ", "_")
        t0 = time.perf_counter()
        out = train([*common, *extra, f"--trainer.default_root_dir={run}", f"--trainer.logger.init_args.save_dir={run}"])
        seconds[name] = time.perf_counter() - t0
        print(f"{name:>17}: {seconds[name]:7.1f} s  (mean foreground Dice {out['dice'].get('mean_foreground', float('nan')):.3f})",
              flush=True)
    ratio = seconds["with monitors"] / seconds["without monitors"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.epochs} epochs of the demo config; overhead of the monitors: {100 * (ratio - 1):+.1f}% "
          f"(ratio {ratio:.3f}); peak RSS of this process {peak:.0f} MiB")


if __name__ == "__main__":
    main()

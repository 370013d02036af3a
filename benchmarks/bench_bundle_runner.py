"""A MONAI bundle's network explained through the bundle's own preprocessing vs through the toolkit's.

Usage:
    python benchmarks/bench_bundle_runner.py --bundle ../shared/bundles/spleen_ct_segmentation \
        --scan tests/data/real_ct/chest_cta_crop.nii.gz [--method smoothgrad] [--repeats 3]

The bundle's configs are copied to a temporary folder and its network given seeded random weights where
its ``checkpointloader`` looks. The same scan is then explained with the same network and the same
windows (the bundle's inferer) two ways, alternating, ``--repeats`` times each:

- ``bundle``: :class:`~agg2exp_lightning.model_loading.bundle.BundleRunner` (the bundle's ``LoadImaged``,
  orientation, spacing, intensity window), then :func:`~agg2exp_lightning.explain.explain`;
- ``toolkit``: :class:`~agg2exp_lightning.model_loading.ToolkitRunner` at the bundle's spacing, no crop
  to the body (so both grids have the same size), then the same ``explain``.

Reported: process CPU seconds of preprocessing + explanation per run (median over the repeats), their
ratio, and separately the seconds of the bundle's map back to the scan's grid (``--save-maps`` only:
one more inference pass, its postprocessing and ``Invertd``). Process CPU time, not wall time: the
machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agg2exp_lightning.utils import atomic_write_text
from agg2exp_lightning.utils.hardware import hardware_line


def _bundle_with_weights(source: Path, folder: Path, overrides: dict) -> Path:
    from monai.bundle import ConfigParser

    bundle = folder / source.name
    shutil.copytree(source / "configs", bundle / "configs")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    for k, v in overrides.items():
        parser[k] = v
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    path = Path(parser.get_parsed_content("checkpointloader#load_path"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--scan", type=Path, required=True)
    p.add_argument("--method", default="smoothgrad")
    p.add_argument("--method-options", default='{"n_samples": 4, "seed": 0}', help="JSON")
    p.add_argument("--targets", type=int, nargs="+", default=[1])
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="bundle override (monai syntax)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bundle_runner_cpu.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from agg2exp_lightning.explain import explain
    from agg2exp_lightning.model_loading import ToolkitRunner, load_model, parse_overrides

    overrides = parse_overrides(args.override)
    options = json.loads(args.method_options)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = _bundle_with_weights(args.bundle, Path(tmp), overrides)
        loaded = load_model(bundle, bundle_overrides=overrides)
        runners = {"bundle": loaded.runner, "toolkit": ToolkitRunner(loaded.spacing, loaded.runner.window, crop_to_body=False)}
        window = dict(loaded.runner.window)
        roi = window.pop("roi_size", None)
        times: dict[str, list[float]] = {k: [] for k in runners}
        shapes: dict[str, tuple] = {}
        back: list[float] = []
        for _ in range(args.repeats):
            for name, runner in runners.items():
                start = time.process_time()
                image = runner.preprocess(args.scan)
                result = explain(loaded.model, image[None].as_tensor().float(), method=args.method, targets=args.targets, roi_size=roi,
                                 **window, **options)
                times[name].append(time.process_time() - start)
                shapes[name] = tuple(image.shape[1:])
                if name == "bundle":
                    start = time.process_time()
                    runner.to_scan_grid(loaded.model, image, result.attributions, result.prediction)
                    back.append(time.process_time() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["bundle"] / med["toolkit"]
    lines = [
        f"# Bundle's own preprocessing vs the toolkit's ({args.bundle.name})", "",
        f"Command: `python benchmarks/bench_bundle_runner.py --bundle {args.bundle} --scan {args.scan} --method {args.method} "
        f"--method-options '{args.method_options}' --targets {' '.join(map(str, args.targets))} --repeats {args.repeats} "
        f"--threads {args.threads}" + "".join(f" --override '{o}'" for o in args.override) + "`", "",
        hardware_line(), "",
        f"Windows: {roi} ({json.dumps(window)}); grids: bundle {shapes['bundle']}, toolkit {shapes['toolkit']} (no crop to the body).", "",
        "| preprocessing | CPU s per scan, median (all runs) |", "|---|---|",
        *[f"| {k} | {med[k]:.2f} ({', '.join(f'{t:.2f}' for t in times[k])}) |" for k in times], "",
        f"Ratio bundle / toolkit: **{ratio:.3f}**.", "",
        f"Maps back to the scan's grid through the bundle's postprocessing and Invertd (--save-maps only): "
        f"{statistics.median(back):.2f} CPU s per scan (median).", "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

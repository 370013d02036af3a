"""Command line of the method comparison (``agg2exp-compare-methods``).

Examples::

    agg2exp-compare-methods --checkpoint model.ckpt --data data/synthetic_thorax --out runs/methods --max-scans 5
    agg2exp-compare-methods --checkpoint model.ckpt --data /data/Totalsegmentator_v2 --out runs/methods_paper \
        --methods vanilla_gradient smoothgrad --method-option smoothgrad.n_samples=10 --mask recomputed
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.evaluation.compare import METHODS, ComparisonSettings, Explainer, compare_methods, default_explainer
from agg2exp_lightning.evaluation.faithfulness import PAPER_SUBSET_SIZE

log = logging.getLogger(__name__)

__all__ = ["build_parser", "main", "parse_method_options", "run_comparison"]

DEFAULT_TARGETS = ("background", "aorta", "lung_lower_lobe_left", "lung_lower_lobe_right", "trachea", "heart", "ribs")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests and docs can inspect it)."""
    p = argparse.ArgumentParser(prog="agg2exp-compare-methods",
                                description="Faithfulness, sensitivity, complexity and efficiency of attribution methods.")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="trained SegmentationModule checkpoint")
    p.add_argument("--data", required=True, metavar="ROOT", help="TotalSegmentator v2 root or manifest CSV")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it holds a run of the same settings)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"attribution methods among {', '.join(METHODS)} (default: all five)")
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), help="classes to explain (names)")
    p.add_argument("--max-scans", type=int, default=None, metavar="N", help="first N scans of the split by id")
    p.add_argument("--split", default="test", help="data split (default: test)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="resampling spacing in mm (default: the checkpoint's training spacing, else 1.5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--method-option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="option of one method, e.g. smoothgrad.n_samples=10 (JSON values); repeatable")
    m = p.add_argument_group("metric settings (paper defaults)")
    m.add_argument("--n-runs", type=int, default=100, help="faithfulness: random subsets (100)")
    m.add_argument("--subset-size", type=int, default=PAPER_SUBSET_SIZE, help="faithfulness: voxels per subset (50176)")
    m.add_argument("--mask", choices=("fixed", "recomputed"), default="fixed",
                   help="faithfulness: proxy mask of the clean prediction (fixed) or of each perturbed one (recomputed, as the paper)")
    m.add_argument("--batch-size", type=int, default=2, help="faithfulness: perturbed copies per forward pass")
    m.add_argument("--noise-samples", type=int, default=3, help="sensitivity: noisy copies (3)")
    m.add_argument("--radius", type=float, default=0.1, help="sensitivity: uniform noise half-width (0.1)")
    m.add_argument("--eps", type=float, default=0.1, help="complexity: threshold on max-normalised |a| (0.1)")
    m.add_argument("--seed", type=int, default=0, help="seed of subsets and noise")
    m.add_argument("--no-one-class-timing", action="store_true", help="skip the extra one-class explanation for timing")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def parse_method_options(pairs: Sequence[str], methods: Sequence[str] = METHODS) -> dict[str, dict[str, Any]]:
    """``["smoothgrad.n_samples=10"]`` -> ``{"smoothgrad": {"n_samples": 10}}`` (values parsed as JSON when they are).

    Raises:
        ValueError: an item is not ``METHOD.KEY=VALUE`` or names an unknown method.
    """
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        method, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"Expected --method-option as METHOD.KEY=VALUE, got {pair!r}")
        if method not in methods:
            raise ValueError(f"--method-option {pair!r}: unknown method {method!r}; expected one of {list(methods)}")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(method, {})[key] = parsed
    return options


def _scans(dataset) -> list[tuple[str, Callable[[], Any]]]:
    """``(subject_id, loader)`` per item of a MONAI dataset of whole volumes; a scan loads only when called."""
    return [(str(record["subject_id"]), functools.partial(_load_image, dataset, i)) for i, record in enumerate(dataset.data)]


def _load_image(dataset, index: int) -> Any:
    return dataset[index]["image"]


def run_comparison(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    targets: Sequence[str] = DEFAULT_TARGETS,
    max_scans: int | None = None,
    split: str = "test",
    spacing: Sequence[float] | None = None,
    device: str = "auto",
    settings: ComparisonSettings | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    explainer: Explainer | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Load the checkpoint and a split of the data, then :func:`compare_methods` (sliding windows of the checkpoint).

    Raises:
        DataError: unreadable checkpoint or data, or an empty split.
        ValueError: bad settings or targets.
    """
    import dataclasses

    import torch

    from agg2exp_lightning.audit.checkpoint_audit import checkpoint_spacing
    from agg2exp_lightning.audit.output_folder import file_sha256
    from agg2exp_lightning.data.datamodule import ThoraxDataModule
    from agg2exp_lightning.model import load_segmentation_checkpoint

    if max_scans is not None and (not isinstance(max_scans, int) or max_scans < 1):
        raise ValueError(f"Expected argument `max_scans` to be a positive integer, but got {max_scans!r}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    module = load_segmentation_checkpoint(checkpoint, map_location=str(dev)).to(dev)
    hp = module.hparams
    spacing = tuple(spacing) if spacing is not None else (checkpoint_spacing(checkpoint) or (1.5, 1.5, 1.5))
    window = dict(roi_size=tuple(int(r) for r in hp["roi_size"]), sw_batch_size=int(hp.get("sw_batch_size", 1)),
                  overlap=float(hp.get("sw_overlap", 0.25)), sw_mode=str(hp.get("sw_mode", "constant")))
    settings = dataclasses.replace(settings or ComparisonSettings(), **window)
    dm = ThoraxDataModule(data_root=str(data), spacing=spacing, cache_rate=0.0)
    dataset = dm.whole_volume_dataset(split, max_subjects=max_scans)
    if len(dataset) == 0:
        raise DataError(f"{data}: no scans in split {split!r}")
    log.info("comparing %d methods on %d scans of %s (split %s, spacing %s mm)", len(methods), len(dataset), data, split, spacing)
    if explainer is None:
        explainer = default_explainer(roi_size=window["roi_size"], sw_batch_size=window["sw_batch_size"],
                                      overlap=window["overlap"], mode=window["sw_mode"], **(method_options or {}))
    context = {"checkpoint_sha256": file_sha256(checkpoint), "data": str(Path(data).resolve()), "split": split,
               "spacing": list(spacing), "method_options": method_options or {}}
    return compare_methods(module, _scans(dataset), methods, targets, out_dir, explainer=explainer, settings=settings,
                           class_names=module.class_names, context=context, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the comparison; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = parse_method_options(args.method_option)
        settings = ComparisonSettings(
            n_runs=args.n_runs, subset_size=args.subset_size, mask=args.mask, batch_size=args.batch_size,
            noise_samples=args.noise_samples, radius=args.radius, eps=args.eps, seed=args.seed,
            time_one_class=not args.no_one_class_timing,
        )
        run_comparison(args.checkpoint, args.data, args.out, methods=args.methods, targets=args.targets,
                       max_scans=args.max_scans, split=args.split, spacing=args.spacing, device=args.device,
                       settings=settings, method_options=options, progress=not args.quiet)
    except (DataError, ValueError, ImportError) as err:
        print(f"agg2exp-compare-methods: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only --out ...
        from agg2exp_lightning.audit.cli import describe_os_error

        print(f"agg2exp-compare-methods: error: {describe_os_error(err, args.out)}", file=sys.stderr)
        return 1
    print(f"table: {Path(args.out) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

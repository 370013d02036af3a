"""Command line of the method comparison (``agg2exp-compare-methods``).

Examples::

    agg2exp-compare-methods --model model.ckpt --data data/synthetic_thorax --out runs/methods --max-scans 5
    agg2exp-compare-methods --model bundles/my_ct_bundle --data scans.csv --targets liver tumour --out runs/methods_bundle
    agg2exp-compare-methods --model model.ckpt --data /data/Totalsegmentator_v2 --out runs/methods_paper \
        --methods vanilla_gradient smoothgrad --method-option smoothgrad.n_samples=10 --protocol paper
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from agg2exp_lightning.cli_common import (
    METHOD_OPTION_HELP,
    METHOD_OPTION_SYNTAX,
    ArgumentParser,
    add_device_arguments,
    add_model_arguments,
    add_version_argument,
    describe_os_error,
    model_source_options,
    parse_method_options,
    single_device,
)
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.evaluation.compare import (
    DEFAULT_TARGETS,
    METHODS,
    ComparisonSettings,
    MethodAttributor,
    compare_methods,
    make_method_attributor,
)
from agg2exp_lightning.evaluation.faithfulness import PAPER_SUBSET_SIZE
from agg2exp_lightning.protocols import DEFAULT_PROTOCOL, PROTOCOLS

log = logging.getLogger(__name__)

__all__ = ["build_parser", "comparison_options", "main", "run_comparison"]



def build_parser() -> argparse.ArgumentParser:
    """The argument parser (separate so tests and docs can inspect it)."""
    p = ArgumentParser(prog="agg2exp-compare-methods",
                                description="Faithfulness, sensitivity, complexity and efficiency of attribution methods.")
    add_model_arguments(p)
    p.add_argument("--data", required=True, metavar="ROOT", help="TotalSegmentator v2 root or manifest CSV")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it holds a run of the same settings)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"attribution methods among {', '.join(METHODS)} (default: all five)")
    p.add_argument("--targets", nargs="+", default=None, metavar="CLASS",
                   help="classes to explain, by name or channel id (default: the paper's seven thorax classes when the "
                        "model has them, else every class)")
    p.add_argument("--max-scans", type=int, default=None, metavar="N", help="first N scans of the split by id")
    p.add_argument("--split", default="test", help="data split (default: test)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="resampling spacing in mm (default: the checkpoint's training spacing, else 1.5)")
    add_device_arguments(p, strategy=False)
    p.add_argument("--method-option", action="append", default=[], metavar=METHOD_OPTION_SYNTAX, help=METHOD_OPTION_HELP)
    m = p.add_argument_group("metric settings (paper defaults)")
    m.add_argument("--n-runs", type=int, default=100, help="faithfulness: random subsets (100)")
    m.add_argument("--subset-size", type=int, default=PAPER_SUBSET_SIZE, help="faithfulness: voxels per subset (50176)")
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL, metavar="NAME",
                   help=f"bundle of evaluation choices, one of {', '.join(PROTOCOLS)} (default %(default)s; "
                        "paper = exactly the published evaluation; see agg2exp_lightning/protocols.py)")
    m.add_argument("--mask", choices=("fixed", "recomputed"), default=None,
                   help="faithfulness: proxy mask of the clean prediction (fixed) or of each perturbed one (recomputed, as the paper); "
                        "default: the protocol's")
    m.add_argument("--sensitivity-draws", choices=("shared", "independent"), default=None,
                   help="sensitivity: SmoothGrad noise / KernelSHAP coalitions of the noisy copies shared with the clean scan, "
                        "or drawn anew (as the paper); default: the protocol's")
    m.add_argument("--sensitivity-prediction", choices=("clean", "noisy"), default=None,
                   help="sensitivity: KernelSHAP of a noisy copy with the clean scan's prediction as feature and proxy mask "
                        "(clean, as the paper) or with its own (noisy); default: the protocol's")
    m.add_argument("--batch-size", type=int, default=2, help="faithfulness: perturbed copies per forward pass")
    m.add_argument("--noise-samples", type=int, default=3, help="sensitivity: noisy copies (3)")
    m.add_argument("--radius", type=float, default=0.1, help="sensitivity: uniform noise half-width (0.1)")
    m.add_argument("--eps", type=float, default=0.1, help="complexity: threshold on max-normalised |a| (0.1)")
    m.add_argument("--seed", type=int, default=0, help="seed of subsets and noise")
    m.add_argument("--no-one-class-timing", action="store_true", help="skip the extra one-class explanation for timing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    add_version_argument(p)
    return p


def comparison_options(items: Sequence[str], methods: Sequence[str] = METHODS) -> dict[str, Any]:
    """``--method-option`` items as :func:`~agg2exp_lightning.evaluation.compare.make_method_attributor` takes them.

    ``METHOD.KEY=VALUE`` goes to that method; an unprefixed ``KEY=VALUE`` goes to every compared method
    that takes ``KEY``, or to all of them when ``KEY`` is a keyword of
    :func:`~agg2exp_lightning.explain.explain` itself (``max_memory``, ``sign``, ...).

    Returns:
        ``{method: {key: value}}`` plus shared keywords, e.g. ``{"smoothgrad": {"n_samples": 10}, "max_memory": 1e9}``.

    Raises:
        ValueError: a malformed item, a prefix that is no compared method, or an unprefixed key no method takes.

    Example:
        >>> comparison_options(["smoothgrad.n_samples=10", "n_steps=8"], ["smoothgrad", "integrated_gradients"])
        {'integrated_gradients': {'n_steps': 8}, 'smoothgrad': {'n_samples': 10}}
    """
    import inspect

    from agg2exp_lightning.explain import explain
    from agg2exp_lightning.explain.methods import method_options
    from agg2exp_lightning.utils import did_you_mean

    parsed = parse_method_options(items, methods)
    shared_keys = {p for p, v in inspect.signature(explain).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    out: dict[str, Any] = {}
    for o in (o for o in parsed if o.method is None):
        takers = [m for m in methods if o.key in method_options(m)]
        if o.key in shared_keys:
            out[o.key] = o.value
        elif not takers:
            known = sorted(shared_keys | {k for m in methods for k in method_options(m)})
            raise ValueError(f"--method-option {o.key}={o.value!r}: none of the methods {list(methods)} takes {o.key!r}"
                             f"{did_you_mean(o.key, known)}")
        for m in takers if o.key not in shared_keys else ():
            out.setdefault(m, {})[o.key] = o.value
    for o in (o for o in parsed if o.method is not None):  # a METHOD. prefix wins over an unprefixed option
        out.setdefault(o.method, {})[o.key] = o.value
    return out


def _scans(dataset) -> list[tuple[str, Callable[[], Any]]]:
    """``(subject_id, loader)`` per item of a MONAI dataset of whole volumes; a scan loads only when called."""
    return [(str(record["subject_id"]), functools.partial(_load_image, dataset, i)) for i, record in enumerate(dataset.data)]


def _load_image(dataset, index: int) -> Any:
    return dataset[index]["image"]


def run_comparison(
    model: Any,
    data: str | Path,
    out_dir: str | Path,
    *,
    weights: str | Path | None = None,
    label_map: Any = None,
    methods: Sequence[str] = METHODS,
    targets: Sequence[str | int] | None = None,
    max_scans: int | None = None,
    split: str = "test",
    spacing: Sequence[float] | None = None,
    device: Any = "auto",
    settings: ComparisonSettings | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    explainer: MethodAttributor | None = None,
    progress: bool = True,
    source_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Load the model and a split of the data, then :func:`compare_methods` (with the model's sliding windows).

    Args:
        model: this toolkit's checkpoint, a MONAI bundle folder, ``package.module:function``, an ``nn.Module``
            (with ``label_map``) or a :class:`~agg2exp_lightning.model_loading.LoadedModel`.
        data: a TotalSegmentator v2 root or a manifest CSV.
        out_dir: the output folder (resumed if it holds a run of the same settings).
        weights: state dict of a ``package.module:function`` model.
        label_map: names of the model's output channels (default: the source's).
        methods: attribution methods to compare.
        targets: classes to explain, by name or id (default: :data:`DEFAULT_TARGETS` when the model has
            them all, else every class).
        max_scans, split, spacing: which scans, resampled how (spacing default: the model source's, else 1.5 mm).
        device: ``"auto"``, ``"cpu"``, ``"cuda:1"`` or a ``torch.device``.
        settings, method_options, explainer, progress: see :func:`compare_methods`.
        source_options: ``bundle_overrides``, ``folds``, ``checkpoint_name`` of
            :func:`~agg2exp_lightning.model_loading.load_model`. A bundle or nnU-Net folder runs its own
            preprocessing and windows (``spacing`` is refused).

    Raises:
        DataError: unreadable model or data, or an empty split.
        ValueError: bad settings or targets.
    """
    import dataclasses

    import torch

    from agg2exp_lightning.data.datamodule import ThoraxDataModule
    from agg2exp_lightning.model_loading import LoadedModel, load_model

    if max_scans is not None and (not isinstance(max_scans, int) or max_scans < 1):
        raise ValueError(f"Expected argument `max_scans` to be a positive integer, but got {max_scans!r}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights=weights, label_map=label_map, map_location=str(dev),
                                                                      **dict(source_options or {}))
    module = loaded.model.to(dev)
    if targets is None:
        targets = list(DEFAULT_TARGETS) if set(DEFAULT_TARGETS) <= set(loaded.class_names) else list(loaded.class_names)
    window = dict(loaded.window)
    if window:
        window["sw_mode"] = window.pop("mode")
        sigma = window.pop("sigma_scale", 0.125)
        if window["sw_mode"] == "gaussian" and sigma != 0.125:
            raise DataError(f"{loaded.kind} {loaded.source}: its windows blend with sigma_scale={sigma}; the comparison's "
                            "faithfulness passes blend with MONAI's default 0.125")
        settings = dataclasses.replace(settings or ComparisonSettings(), **window)
    else:
        settings = settings or ComparisonSettings()
    if loaded.own_runner:  # a bundle's or nnU-Net's own preprocessing of each scan file
        from agg2exp_lightning.data.subjects import discover_records, select_split

        runner = loaded.scan_runner(spacing=spacing)
        records = sorted(select_split(discover_records(data), split, source=data), key=lambda r: r.subject_id)[:max_scans]
        scans = [(r.subject_id, functools.partial(runner.preprocess, r.image)) for r in records]
        spacing = loaded.spacing
    else:
        spacing = tuple(spacing) if spacing is not None else (loaded.spacing or (1.5, 1.5, 1.5))
        dm = ThoraxDataModule(data_root=str(data), spacing=spacing, cache_rate=0.0, crop_to_body=bool(settings.crop_to_body))
        dataset = dm.whole_volume_dataset(split, max_subjects=max_scans)
        scans = _scans(dataset)
        runner = loaded.scan_runner(spacing=spacing, crop_to_body=bool(settings.crop_to_body))
    if len(scans) == 0:
        raise DataError(f"{data}: no scans in split {split!r}")
    log.info("comparing %d methods on %d scans of %s (split %s, %s)", len(methods), len(scans), data, split,
             f"spacing {spacing} mm" if runner.name == "toolkit" else f"the model's own preprocessing ({runner.name})")
    if explainer is None:
        sw = dict(roi_size=settings.roi_size, sw_batch_size=settings.sw_batch_size, overlap=settings.overlap, mode=settings.sw_mode)
        explainer = make_method_attributor(protocol=settings.resolved_protocol(), sensitivity_draws=settings.sensitivity_draws,
                                      **(sw if settings.roi_size is not None else {}), **(method_options or {}))
    context = {**loaded.identity, "data": str(Path(data).resolve()), "split": split,
               "spacing": list(spacing) if spacing else None, "method_options": method_options or {}, "runner": runner.settings()}
    return compare_methods(module, scans, methods, targets, out_dir, explainer=explainer, settings=settings,
                           class_names=loaded.class_names, context=context, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the comparison; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = comparison_options(args.method_option, args.methods)
        device = single_device(args.accelerator, args.devices)
        settings = ComparisonSettings(
            protocol=args.protocol, sensitivity_draws=args.sensitivity_draws, sensitivity_prediction=args.sensitivity_prediction,
            n_runs=args.n_runs, subset_size=args.subset_size, mask=args.mask, batch_size=args.batch_size,
            noise_samples=args.noise_samples, radius=args.radius, eps=args.eps, seed=args.seed,
            time_one_class=not args.no_one_class_timing,
        )
        run_comparison(args.model, args.data, args.out, weights=args.weights, label_map=args.label_map, methods=args.methods,
                       targets=args.targets, max_scans=args.max_scans, split=args.split, spacing=args.spacing, device=device,
                       settings=settings, method_options=options, progress=not args.quiet, source_options=model_source_options(args))
    except (DataError, ValueError, ImportError) as err:
        print(f"agg2exp-compare-methods: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only --out ...
        print(f"agg2exp-compare-methods: error: {describe_os_error(err, args.out)}", file=sys.stderr)
        return 1
    print(f"table: {Path(args.out) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

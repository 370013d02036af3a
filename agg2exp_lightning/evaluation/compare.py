"""Compare attribution methods over a cohort: faithfulness, sensitivity, complexity and efficiency per scan.

Each (scan, method) pair is written to ``out_dir/scans/<subject>/<method>.csv`` atomically as soon as it
is done, so an interrupted run resumes where it stopped. Within a scan every method is scored on the
same random subsets (one shared set of perturbed forward passes) and the same noisy copies.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from agg2exp_lightning.evaluation._checks import (
    UndefinedScoreWarning,
    check_attributions,
    inference,
    model_device,
    positive_int,
    warn_undefined,
    zero_targets,
)
from agg2exp_lightning.evaluation.complexity import effective_complexity
from agg2exp_lightning.evaluation.efficiency import explanation_efficiency, timed
from agg2exp_lightning.evaluation.faithfulness import (
    PAPER_SUBSET_SIZE,
    _logits_fn,
    attribution_sums,
    output_drops,
    pearson_rows,
    random_subsets,
)
from agg2exp_lightning.evaluation.report import write_report
from agg2exp_lightning.evaluation.sensitivity import sensitivity, uniform_noise
from agg2exp_lightning.explain import METHODS, prediction_labels
from agg2exp_lightning.labels import THORAX_CLASSES, resolve_targets
from agg2exp_lightning.protocols import DEFAULT_PROTOCOL, Protocol, ProtocolLike, get_protocol, resolve_protocol
from agg2exp_lightning.utils import atomic_write_text, look_up_option, plain_tensor
from agg2exp_lightning.utils.output_folder import OutputFolderKind, config_fingerprint, open_output_folder

log = logging.getLogger(__name__)

__all__ = ["METHODS", "METRIC_COLUMNS", "ComparisonSettings", "compare_methods", "make_method_attributor", "resolve_targets"]

#: The classes a comparison explains by default (the paper's comparison).
DEFAULT_TARGETS: tuple[str, ...] = ("background", "aorta", "lung_lower_lobe_left", "lung_lower_lobe_right", "trachea", "heart", "ribs")
#: Per-(scan, method, target) columns of the long table.
METRIC_COLUMNS: tuple[str, ...] = (
    "faithfulness", "sensitivity_avg", "sensitivity_max", "complexity", "seconds_one_class", "seconds_all_classes",
)
#: The method comparison's explainer: ``explainer(model, image [C, *S], method, targets) -> attributions [T, *S]``
#: (method and targets per call, maps only; the audit's :data:`~agg2exp_lightning.audit.scan_prediction.ScanExplainer` returns
#: the whole explanation of one scan). Under a protocol whose ``sensitivity_prediction`` is ``"clean"`` (the
#: paper's) KernelSHAP is called as ``explainer(..., prediction=labels [*S])`` for the clean scan and its noisy
#: copies: one prediction of the clean scan held as feature and proxy mask.
MethodAttributor = Callable[[nn.Module, Tensor, str, list[int]], Tensor]
#: A scan: its tensor ``[C, *S]``, or a zero-argument callable loading it (not called for finished scans).
ScanSource = Union[Tensor, Callable[[], Tensor]]
#: A comparison's output folder: ``settings.json`` names its settings and context (resume or refuse).
COMPARISON_FOLDER = OutputFolderKind(
    manifest="settings.json",
    outputs=("settings.json", "scans", "results.csv", "summary.csv", "summary.md", "summary.png"),
    job="a comparison",
    label="`out_dir`",
    remedy="use another output folder or remove it to start afresh",
)


@dataclass(frozen=True)
class ComparisonSettings:
    """Metric settings of a comparison (paper defaults); their fingerprint guards resumed runs.

    Attributes:
        n_runs, subset_size, baseline, mask, batch_size: faithfulness correlation (see
            :func:`~agg2exp_lightning.evaluation.faithfulness.faithfulness_correlation`).
        noise_samples, radius: sensitivity.
        eps: effective complexity threshold.
        seed: subsets and noise are drawn from ``(seed, subject id)``, so a scan gets the same ones in
            every run and for every method.
        roi_size, sw_batch_size, overlap, sw_mode: sliding-window inference for the faithfulness passes.
        time_one_class: also time an explanation of the first target alone.
        protocol: ``"corrected"`` or ``"paper"`` (:mod:`agg2exp_lightning.protocols`): gives ``mask``,
            ``sensitivity_draws``, ``sensitivity_prediction`` and ``crop_to_body`` where they are ``None``, and the explainer's
            KernelSHAP spread and IG rule (:func:`make_method_attributor`).
        sensitivity_draws: ``"shared"`` (the noisy copies' SmoothGrad noise / KernelSHAP coalitions
            are those of the clean scan) or ``"independent"`` (drawn anew for every copy).
        sensitivity_prediction: KernelSHAP of the noisy copies with the clean scan's prediction as feature
            and proxy mask (``"clean"``, the paper's) or with each copy's own (``"noisy"``).
        crop_to_body: explain and score body-cropped volumes (read by
            :func:`~agg2exp_lightning.evaluation.cli.run_comparison` when it loads the data).
    """

    n_runs: int = 100
    subset_size: int = PAPER_SUBSET_SIZE
    baseline: Union[str, float] = "min"
    mask: Union[str, None] = None
    batch_size: int = 2
    noise_samples: int = 3
    radius: float = 0.1
    eps: float = 0.1
    seed: int = 0
    roi_size: Union[tuple[int, ...], None] = None
    sw_batch_size: int = 1
    overlap: float = 0.25
    sw_mode: str = "constant"
    time_one_class: bool = True
    protocol: str = DEFAULT_PROTOCOL
    sensitivity_draws: Union[str, None] = None
    crop_to_body: Union[bool, None] = None
    sensitivity_prediction: Union[str, None] = None

    def __post_init__(self) -> None:
        chosen = get_protocol(self.protocol)
        object.__setattr__(self, "protocol", chosen.name)
        for field_name, setting in _PROTOCOL_FIELDS.items():
            if getattr(self, field_name) is None:
                object.__setattr__(self, field_name, getattr(chosen, setting))
        look_up_option("sensitivity_draws", self.sensitivity_draws, ("shared", "independent"))
        look_up_option("sensitivity_prediction", self.sensitivity_prediction, ("clean", "noisy"))
        positive_int("n_runs", self.n_runs, minimum=2)
        for name in ("subset_size", "batch_size", "noise_samples", "sw_batch_size"):
            positive_int(name, getattr(self, name))
        if self.mask not in ("fixed", "recomputed"):
            raise ValueError(f"Expected argument `mask` to be 'fixed' or 'recomputed', but got {self.mask!r}")
        if not (isinstance(self.radius, (int, float)) and self.radius > 0):
            raise ValueError(f"Expected argument `radius` to be a positive number, but got {self.radius!r}")
        if not (isinstance(self.eps, (int, float)) and 0 <= self.eps < 1):
            raise ValueError(f"Expected argument `eps` to be a number in [0, 1), but got {self.eps!r}")
        if self.roi_size is not None:
            object.__setattr__(self, "roi_size", tuple(int(r) for r in self.roi_size))

    def resolved_protocol(self) -> Protocol:
        """The protocol with this comparison's own ``mask`` / ``sensitivity_draws`` / ``sensitivity_prediction`` /
        ``crop_to_body`` as overrides."""
        return get_protocol(self.protocol, **{setting: getattr(self, f) for f, setting in _PROTOCOL_FIELDS.items()})


#: ComparisonSettings fields that a protocol fills in, and the protocol setting each comes from.
_PROTOCOL_FIELDS = {"mask": "faithfulness_mask", "sensitivity_draws": "sensitivity_draws", "crop_to_body": "crop_to_body",
                    "sensitivity_prediction": "sensitivity_prediction"}


def make_method_attributor(*, protocol: ProtocolLike = None, sensitivity_draws: str | None = None, **options: Any) -> MethodAttributor:
    """:func:`agg2exp_lightning.explain.explain` returning the attribution maps, ``options`` passed on.

    ``options`` holds per-method dicts under the method's name (``{"smoothgrad": {"n_samples": 10}}``)
    and shared keywords of ``explain`` (``roi_size``, ``sw_batch_size``, ``overlap``, ``mode``).
    ``protocol`` goes to ``explain`` (KernelSHAP spread, IG rule). Methods that sample (SmoothGrad, IG
    with a random baseline, KernelSHAP) get a seed unless one is given: with ``sensitivity_draws``
    ``"shared"`` (the corrected protocol's) always ``seed=0``, so that a method's maps of the clean and
    the noisy scans differ by the input noise alone; with ``"independent"`` (the paper's) a seed made
    from the input's bytes, so every noisy copy draws its own noise or coalitions, as the published
    runs did, and a resumed run still reproduces the finished ones. The returned function also takes
    ``prediction=`` (a label map held fixed instead of the input's own prediction, see
    :func:`~agg2exp_lightning.explain.explain`).
    """
    draws = look_up_option("sensitivity_draws", sensitivity_draws or resolve_protocol(protocol).sensitivity_draws,
                           ("shared", "independent"))
    try:
        from agg2exp_lightning.explain import explain
        from agg2exp_lightning.explain.methods import method_options
    except ImportError as err:
        raise ImportError(f"comparing methods needs agg2exp_lightning.explain.explain, which cannot be imported: {err}") from err
    shared = {k: v for k, v in options.items() if k not in METHODS}
    for method in METHODS:
        if method in options and not isinstance(options[method], dict):
            raise ValueError(f"Expected the options of method {method!r} as a dict, but got {options[method]!r}")

    def run(model: nn.Module, image: Tensor, method: str, targets: list[int], prediction: Tensor | None = None) -> Tensor:
        own = dict(options.get(method, {}))
        if "seed" in method_options(method) and "seed" not in own:
            own["seed"] = 0 if draws == "shared" else _content_seed(image)
        result = explain(model, image, method=method, targets=targets, keep_attributions=True, protocol=protocol,
                         prediction=prediction, **shared, **own)
        return result.attributions

    return run


def _content_seed(image: Tensor) -> int:
    """A seed made from a tensor's bytes: the same input gets the same draws, another input other ones."""
    x = plain_tensor(image)
    return zlib.crc32(x.detach().cpu().contiguous().numpy().tobytes())


def _safe_name(subject_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", subject_id)
    return name if name == subject_id else f"{name}-{zlib.crc32(subject_id.encode()):08x}"


def _finished(path: Path, target_names: list[str], fingerprint: str) -> pd.DataFrame | None:
    """The stored rows of a (scan, method) pair if they cover ``target_names`` with these settings."""
    if not path.is_file():
        return None
    try:
        rows = pd.read_csv(path, dtype={"subject_id": str, "settings": str, "target": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        log.warning("ignoring unreadable partial result %s", path)
        return None
    if "settings" not in rows or set(rows["settings"].astype(str)) != {fingerprint} or not set(target_names) <= set(rows["target"]):
        return None
    return rows[rows["target"].isin(target_names)]


def _claim_output_folder(out_dir: Path, settings: ComparisonSettings, context: Mapping[str, Any]) -> str:
    """Claim ``out_dir`` for these settings and context (``settings.json``; resume or refuse); returns the
    short fingerprint that marks the per-scan rows."""
    config = dataclasses.asdict(settings) | {"context": dict(context), "protocol_settings": settings.resolved_protocol().as_dict()}
    open_output_folder(out_dir, config, COMPARISON_FOLDER)
    return config_fingerprint(config)[:12]


class _ScanContext:
    """What all methods of one scan share: subsets, output drops, noise (drawn lazily, once)."""

    def __init__(self, model: nn.Module, subject_id: str, source: ScanSource, targets: list[int],
                 settings: ComparisonSettings, fingerprint: str):
        self.model, self.subject_id, self.source, self.targets, self.s = model, subject_id, source, targets, settings
        self.fingerprint = fingerprint
        self.seed = [settings.seed, zlib.crc32(subject_id.encode())]
        self._image: Tensor | None = None
        self._drops: Tensor | None = None
        self._subsets: np.ndarray | None = None
        self._prediction: Tensor | None = None

    @property
    def image(self) -> Tensor:
        if self._image is None:
            x = self.source() if callable(self.source) else self.source
            x = torch.as_tensor(plain_tensor(x))
            self._image = x.detach().to(model_device(self.model, x.device))
        return self._image

    def subsets(self) -> np.ndarray:
        if self._subsets is None:
            n_voxels = int(np.prod(self.image.shape[1:]))
            rng = np.random.default_rng(self.seed + [1])
            self._subsets = random_subsets(n_voxels, self.s.subset_size, self.s.n_runs, rng)
        return self._subsets

    def drops(self) -> Tensor:
        if self._drops is None:
            s = self.s
            self._drops = output_drops(
                self.model, self.image, self.targets, self.subsets(), baseline=s.baseline, mask=s.mask,
                batch_size=s.batch_size, roi_size=s.roi_size, sw_batch_size=s.sw_batch_size, overlap=s.overlap,
                sw_mode=s.sw_mode, check_distinct=False,
            )
        return self._drops

    def prediction(self) -> Tensor:
        """``[*S]`` labels of the clean scan, predicted as the faithfulness passes predict it (once)."""
        if self._prediction is None:
            s = self.s
            forward = _logits_fn(self.model, s.roi_size, s.sw_batch_size, s.overlap, s.sw_mode)
            with inference(self.model):
                self._prediction = prediction_labels(forward(self.image[None]))[0]
        return self._prediction

    def noise(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + [2])
        return uniform_noise(tuple(self.image.shape), self.s.noise_samples, self.s.radius, rng)


def _evaluate_method(ctx: _ScanContext, method: str, explainer: MethodAttributor, names: list[str]) -> pd.DataFrame:
    s, model, image, targets = ctx.s, ctx.model, ctx.image, ctx.targets
    keep = {}
    if method.startswith("kernelshap") and s.sensitivity_prediction == "clean":
        # the paper's KernelSHAP: one prediction of the clean scan is the feature and proxy mask of the clean
        # scan's explanation and of every noisy copy's (the authors' wrapper closes over one out_max)
        _check_takes_prediction(explainer)
        keep = {"prediction": ctx.prediction()}

    def explain_targets(ts: Sequence[int]) -> Tensor:
        return explainer(model, image, method, list(ts), **keep)

    if s.time_one_class:
        eff, attributions = explanation_efficiency(explain_targets, targets)
        seconds_one, seconds_all = eff.seconds_one_class, eff.seconds_all_classes
    else:
        attributions, seconds_all = timed(explain_targets, targets)
        seconds_one = float("nan")
    attributions = torch.as_tensor(attributions).detach()
    if attributions.shape[0] != len(targets) or tuple(attributions.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(f"explainer returned attributions of shape {tuple(attributions.shape)} for method {method!r}; "
                         f"expected [{len(targets)}, {', '.join(map(str, image.shape[1:]))}]")
    faith = torch.full((len(targets),), float("nan"), dtype=torch.float64)
    a = check_attributions(attributions)
    zeros = zero_targets(a)
    if zeros:
        warn_undefined(f"{ctx.subject_id}/{method}: all-zero attribution maps for {[names[i] for i in zeros]}: "
                       "faithfulness, sensitivity and complexity are NaN there")
    rest = [i for i in range(len(targets)) if i not in zeros]
    if rest:
        sums = attribution_sums(a[rest], ctx.subsets(), check_distinct=False)
        faith[rest] = pearson_rows(sums, ctx.drops()[rest], names=("attribution sums", "output drops"))
    with warnings.catch_warnings():  # the all-zero maps were reported once above
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        sens = sensitivity(lambda x: explainer(model, x, method, list(targets), **keep), image, a, noise=ctx.noise())
        comp = effective_complexity(a, eps=s.eps)
    return pd.DataFrame({
        "subject_id": ctx.subject_id, "method": method, "target": names,
        "faithfulness": faith.numpy(), "sensitivity_avg": sens.average.numpy(), "sensitivity_max": sens.maximum.numpy(),
        "complexity": comp.numpy(), "seconds_one_class": seconds_one, "seconds_all_classes": seconds_all,
        "settings": ctx.fingerprint,
    })


def _check_takes_prediction(explainer: MethodAttributor) -> None:
    """Refuse an explainer that cannot hold the clean prediction fixed (``prediction=``) when the protocol asks it to."""
    try:
        params = inspect.signature(explainer).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call decide
        return
    if not any(p.name == "prediction" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise ValueError("Expected `explainer` to take a `prediction=` keyword: the protocol's sensitivity_prediction='clean' "
                         "explains KernelSHAP's noisy copies with the clean scan's prediction (or use a protocol with "
                         "sensitivity_prediction='noisy')")


def compare_methods(
    model: nn.Module,
    images: Iterable[tuple[str, ScanSource]],
    methods: Sequence[str] = METHODS,
    targets: Sequence[Union[str, int]] = DEFAULT_TARGETS,
    out_dir: Union[str, Path] = "method_comparison",
    *,
    explainer: MethodAttributor | None = None,
    settings: ComparisonSettings | None = None,
    class_names: Sequence[str] = THORAX_CLASSES,
    context: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Score attribution methods on a cohort and write the per-scan results and the summary table.

    Args:
        model: segmentation network (``[B, C, *S] -> [B, classes, *S]`` logits).
        images: ``(subject_id, scan)`` pairs; a scan is a ``[C, *S]`` tensor or a callable loading it
            (only called for scans with unfinished methods).
        methods: method names passed to ``explainer``.
        targets: class names or ids to explain.
        out_dir: output folder (``scans/`` per-scan CSVs, ``settings.json``, ``results.csv``, summary
            CSV / Markdown / PNG from :func:`~agg2exp_lightning.evaluation.report.write_report`).
        explainer: ``(model, image, method, targets) -> [T, *S]``; default :func:`make_method_attributor`. Under
            a protocol with ``sensitivity_prediction="clean"`` (the paper's) it must also take ``prediction=``.
        settings: metric settings (paper defaults).
        class_names: names of the model's classes (rows are labelled with them).
        context: what else decides the numbers (checkpoint hash, data, method options...): stored in
            ``settings.json`` with the settings; a folder of another context or settings is refused.
        progress: show a progress bar.

    Returns:
        The long table: one row per scan, method and target with :data:`METRIC_COLUMNS`.

    Raises:
        ValueError: unknown targets, no methods or scans, repeated subject ids, an output folder of other
            settings, or an explainer returning maps of the wrong shape.
    """
    settings = settings or ComparisonSettings()
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"Expected `methods` to be a non-empty list without repeats, got {methods!r}")
    target_ids = resolve_targets(targets, class_names)
    names = [class_names[t] for t in target_ids]
    if explainer is None:
        window = {} if settings.roi_size is None else dict(roi_size=settings.roi_size, sw_batch_size=settings.sw_batch_size,
                                                           overlap=settings.overlap, mode=settings.sw_mode)
        explainer = make_method_attributor(protocol=settings.resolved_protocol(), sensitivity_draws=settings.sensitivity_draws, **window)
    out = Path(out_dir)
    fingerprint = _claim_output_folder(out, settings, dict(context or {}))
    frames, seen = [], set()
    total = len(images) * len(methods) if hasattr(images, "__len__") else None
    bar = _progress(progress, total)
    for subject_id, source in images:
        subject_id = str(subject_id)
        if subject_id in seen:
            raise ValueError(f"Expected unique subject ids in `images`, {subject_id!r} appears twice")
        seen.add(subject_id)
        ctx = _ScanContext(model, subject_id, source, target_ids, settings, fingerprint)
        for method in methods:
            path = out / "scans" / _safe_name(subject_id) / f"{method}.csv"
            rows = _finished(path, names, fingerprint)
            if rows is None:
                bar.set_description(f"{subject_id} {method}")
                try:
                    rows = _evaluate_method(ctx, method, explainer, names)
                except ValueError as err:
                    raise ValueError(f"scan {subject_id!r}, method {method!r}: {err}") from err
                atomic_write_text(path, rows.to_csv(index=False))
            else:
                log.info("%s / %s finished earlier: skipped", subject_id, method)
            frames.append(rows)
            bar.update(1)
        del ctx
    bar.close()
    if not frames:
        raise ValueError("Expected at least one scan in `images`, got none")
    table = pd.concat(frames, ignore_index=True)
    write_report(table, out, methods=methods)
    return table


def _progress(enabled: bool, total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="scan-method", disable=not enabled, dynamic_ncols=True)

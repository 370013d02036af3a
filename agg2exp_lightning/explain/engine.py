"""``explain``: attribute every class's proxy and aggregate the maps into RoI importance."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from agg2exp_lightning.explain._captum import captum_attributions
from agg2exp_lightning.explain._predictor import Predictor
from agg2exp_lightning.explain._sliding_window import window_plan
from agg2exp_lightning.explain._validation import (
    CanonicalMethodName,
    check_image,
    check_label_map,
    check_options,
    check_targets,
    check_window,
)
from agg2exp_lightning.explain.aggregation import roi_importance
from agg2exp_lightning.explain.memory import available_memory, check_explain_memory, explain_memory_estimate, probe_pass_bytes_per_voxel
from agg2exp_lightning.explain.methods import AttributionMethod, get_method, resolve_method_name
from agg2exp_lightning.explain.model_state import explanation_mode
from agg2exp_lightning.explain.precision import Precision, precision_choice, with_precision
from agg2exp_lightning.explain.proxy import proxy_output
from agg2exp_lightning.protocols import SETTING_CHOICES, Protocol, ProtocolLike, resolve_protocol
from agg2exp_lightning.utils import look_up_option, positive_int

log = logging.getLogger(__name__)

#: A method by its canonical name or a short alias (the method table, :mod:`~agg2exp_lightning.explain.methods`,
#: has every registered name and alias; any of them is accepted).
MethodName = Union[Literal[CanonicalMethodName, "vg", "sg", "ig", "ks_cubes", "ks_semantic"], str]


@dataclass
class ExplanationResult:
    """What :func:`explain` returns.

    Attributes:
        attributions: ``[T, *S]`` maps (``None`` with ``keep_attributions=False``).
        roi: ``[T, R]`` mass shares ``e_{b->a}`` (float64; NaN where undefined).
        roi_mean: ``[T, R]`` mean ``|attribution|`` per region.
        targets: the explained class ids (row order).
        prediction: ``[*S]`` argmax labels of the unperturbed (blended) prediction.
        seconds: wall time of the call.
        method: canonical method name (or the Captum class name).
        diagnostics: pass counts, IG completeness gaps, KernelSHAP details, absent targets, and per class
            the mean softmax confidence and entropy over its predicted voxels (``prediction_confidence``,
            ``prediction_entropy``, ``[C]``, NaN for a class not predicted).
        region_names: column names (label ids as strings, then the extra masks' names).
    """

    attributions: Tensor | None
    roi: Tensor
    roi_mean: Tensor
    targets: list[int]
    prediction: Tensor
    seconds: float
    method: str
    diagnostics: dict[str, Any] = field(default_factory=dict)
    region_names: list[str] = field(default_factory=list)

    @property
    def attribution(self) -> Tensor | None:
        """Alias of :attr:`attributions`."""
        return self.attributions


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else fallback


def explain(
    model: nn.Module,
    image: Tensor,
    method: Union[MethodName, type] = "smoothgrad",
    targets: Sequence[int] | None = None,
    regions: Tensor | None = None,
    roi_size: Sequence[int] | int | None = None,
    *,
    sw_batch_size: int = 1,
    overlap: float | Sequence[float] = 0.25,
    mode: Literal["constant", "gaussian"] = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    num_regions: int | None = None,
    extra_masks: Mapping[str, Tensor] | None = None,
    sign: Literal["abs", "positive", "negative"] = "abs",
    keep_attributions: bool = True,
    spatial_dims: int = 3,
    eval_mode: bool = True,
    progress: bool = False,
    max_memory: float | None = None,
    pass_bytes_per_voxel: float | None = None,
    protocol: ProtocolLike = None,
    precision: Precision = "auto",
    prediction: Tensor | None = None,
    **method_options: Any,
) -> ExplanationResult:
    """Explain a segmentation model's prediction of ``image`` for each target class (Agg2Exp).

    The attributed scalar of class ``c`` is the proxy ``sum_v logit_c(v) * 1[argmax(v) == c]``
    with the mask of the unperturbed prediction held fixed for every perturbed or noisy input
    (with sliding windows, on the blended output). All targets share the model passes: one forward
    per input sample (a backward per target present in the mask) for the gradient methods, one set
    of perturbed forwards and one multi-output regression for KernelSHAP.

    Args:
        model: maps ``[B, 1, *S]`` to logits ``[B, C, *S]`` (windows ``[B, 1, *roi]`` with
            ``roi_size``). Its modes, ``requires_grad`` flags and the grad/inference mode are
            restored on return, also after an error; it works under ``torch.inference_mode()``.
        image: ``[1, *S]`` or ``[1, 1, *S]`` preprocessed scan (moved to the model's device).
        method: ``"vanilla_gradient"``, ``"smoothgrad"``, ``"integrated_gradients"``,
            ``"kernelshap_cubes"``, ``"kernelshap_semantic"`` (aliases ``vg``, ``sg``, ``ig``,
            ``ks_cubes``, ``ks_semantic``), a method added with
            :func:`~agg2exp_lightning.explain.register_method`, or a Captum attribution class (constructed on a module
            returning all classes' proxies; options go to ``attribute``, ``init_kwargs`` to the
            constructor; one call per target).
        targets: class ids (default: all ``C``).
        regions: ``[*S]`` integer label map to aggregate over (default: the prediction).
        roi_size: sliding-window size (``None``: one pass over the whole volume).
        sw_batch_size, overlap, mode, sigma_scale: sliding-window settings, as in MONAI.
        num_regions: ``R`` (default ``C``, or ``max(C, max(regions) + 1)``).
        extra_masks: ``{name: [*S] bool}`` extra regions, appended as columns.
        sign: which part of the maps the RoI importance aggregates (``"abs"``, ``"positive"``,
            ``"negative"``).
        keep_attributions: return the maps (``False`` saves memory).
        spatial_dims: number of spatial dims of ``image``.
        eval_mode: explain the model in eval mode.
        progress: show a progress bar over the samples (SmoothGrad, IG, KernelSHAP).
        max_memory: bytes the explanation may use (default: what the model's device has available,
            :func:`~agg2exp_lightning.explain.memory.available_memory`; ``math.inf`` turns the check off).
            Before the first model pass, and again once the number of classes is known, the peak is
            estimated (:func:`~agg2exp_lightning.explain.memory.explain_memory_estimate`) and an
            explanation that would not fit is refused with the estimate instead of being killed.
        pass_bytes_per_voxel: activation memory of the model's forward+backward pass per input voxel,
            for that estimate (default: measured once per model by a probe pass at the window size, or
            at most 96^3, :func:`~agg2exp_lightning.explain.memory.probe_pass_bytes_per_voxel`).
        precision: ``"auto"`` (default: bf16 where the device runs it natively, fp32 elsewhere), ``"fp32"``,
            ``"bf16"`` or ``"fp16"``: the model's passes under ``torch.autocast``
            (:mod:`~agg2exp_lightning.explain.precision`; proxies, gradients, regression and aggregation stay
            fp32). An explicit bf16 on a CPU without native bfloat16 is obeyed with a warning (emulated: slow).
            ``diagnostics["precision"]`` records what ran and ``diagnostics["precision_reason"]`` why.
        protocol: ``"corrected"`` (default), ``"paper"`` or a
            :class:`~agg2exp_lightning.protocols.Protocol`: gives the KernelSHAP ``spread``, the IG
            ``integration`` rule and the share of an empty region (``empty_regions``) unless a method
            option sets them (an option overrides the protocol's setting, and the override is recorded);
            ``diagnostics["protocol"]`` records the resolved settings.
        prediction: ``[*S]`` label map held fixed as the proxies' mask (and semantic KernelSHAP's
            features) instead of ``image``'s own prediction; the paper protocol's sensitivity explains
            a noisy copy with the clean scan's prediction this way. ``result.prediction`` is then it.
        **method_options: per method (defaults in brackets):
            all gradient methods: ``batch_size`` [4] samples per forward, ``vectorize`` [False]
            (one vmapped backward for all targets instead of a loop);
            smoothgrad: ``n_samples`` [20], ``noise_level`` [0.1] (sigma = level * (max - min)),
            ``stdev`` [None] (absolute sigma), ``seed`` [None];
            integrated_gradients: ``n_steps`` [20], ``integration`` ["gausslegendre" or a
            ``riemann_*`` rule], ``baseline`` ["zero"; "constant", "mean", "gaussian", "blurred",
            a number or tensor], ``baseline_value`` [0], ``baseline_sigma`` [None], ``blur_sigma``
            [5 voxels], ``seed`` [None];
            kernelshap_*: ``n_samples`` [1000 cubes, 200 semantic; with "captum" the full and empty
            coalitions count, as in Captum], ``baseline`` [0],
            ``batch_size`` [4], ``seed`` [None], ``paired`` [True; constrained only], ``spread`` ["divide"; or
            "broadcast" like Captum], ``estimator`` ["constrained"; or "captum", Captum's KernelShap
            as the paper ran it], ``reuse_windows`` [True] (with windows, run each window once
            per distinct pattern of the features it covers; same values); kernelshap_cubes:
            ``cubes_per_axis`` [8], ``cube_mask`` ["balanced"; or "modulo", the authors' cubes with
            ``cubes_per_axis ** 3`` components]; kernelshap_semantic: ``features`` ["present"; or
            "label_range", every label id from the lowest to the highest predicted one].
            The protocol gives ``spread``, ``estimator``, ``cube_mask`` and ``features`` unless set here.

    Returns:
        An :class:`ExplanationResult`.

    Raises:
        ValueError: a bad argument, named in the message (image shape or channels, non-finite
            voxels, targets outside ``[0, C)``, regions of another shape, unknown method or
            option, too few KernelSHAP samples for the number of features, ...).
        ExplanationTooLarge: (a ``MemoryError``) the estimated peak exceeds ``max_memory``; the
            message gives the estimate, its parts and what to change (e.g. sliding windows).

    Example:
        >>> net = torch.nn.Conv3d(1, 3, 3, padding=1)
        >>> res = explain(net, torch.rand(1, 8, 8, 8), method="vg")
        >>> res.roi.shape, res.attributions.shape
        (torch.Size([3, 3]), torch.Size([3, 8, 8, 8]))
    """
    start = time.perf_counter()
    request = _ExplainRequest.from_arguments(
        model, image, method, targets, regions, roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
        sigma_scale=sigma_scale, num_regions=num_regions, extra_masks=extra_masks, sign=sign, spatial_dims=spatial_dims,
        max_memory=max_memory, pass_bytes_per_voxel=pass_bytes_per_voxel, protocol=protocol, method_options=method_options,
        precision=precision, prediction=prediction,
    )
    # before any pass: a lower bound (the classes are not known yet), so a hopeless volume is refused now
    request.check_memory(*request.memory_lower_bound())
    passes = _run_passes(model, request, eval_mode=eval_mode, progress=progress)
    return _aggregate(request, passes, keep_attributions=keep_attributions, start=start)


@dataclass(frozen=True)
class _ExplainRequest:
    """One call of :func:`explain`, validated before any model pass.

    Attributes:
        name: canonical method name, or a Captum attribution class.
        spec: the method's row of the method table (``None`` for a Captum class).
        options: the method's keyword options, with the protocol's choices filled in.
        protocol: the resolved protocol (with overrides from ``options``).
        image: ``[1, 1, *S]`` float copy of the scan, on ``device``.
        window: sliding-window settings (``None``: whole volume).
        targets: the requested class ids (``None``: all), checked against ``C`` after the first pass.
        region_map: ``[*S]`` label map to aggregate over (``None``: the prediction).
        num_regions: ``R`` if given.
        masks: extra regions by name, ``[*S]`` bool.
        sign: the part of the maps aggregated.
        device: where the model's parameters are.
        memory_limit: bytes the explanation may use.
        pass_bytes_per_voxel: activation memory per input voxel of one pass, for the estimate.
        precision: the precision the model's passes run at (resolved for the device).
        prediction: ``[*S]`` label map held fixed instead of the image's own prediction (``None``: predicted).
    """

    name: Any
    spec: AttributionMethod | None
    options: dict[str, Any]
    protocol: Protocol
    image: Tensor
    window: dict[str, Any] | None
    targets: Sequence[int] | None
    region_map: Tensor | None
    num_regions: int | None
    masks: dict[str, Tensor]
    sign: str
    device: torch.device
    memory_limit: float
    pass_bytes_per_voxel: float
    precision: str = "fp32"
    precision_reason: str = ""
    prediction: Tensor | None = None

    @classmethod
    def from_arguments(
        cls,
        model: Any,
        image: Any,
        method: Any,
        targets: Sequence[int] | None,
        regions: Tensor | None,
        roi_size: Sequence[int] | int | None,
        *,
        sw_batch_size: int,
        overlap: float | Sequence[float],
        mode: str,
        sigma_scale: float | Sequence[float],
        num_regions: int | None,
        extra_masks: Mapping[str, Tensor] | None,
        sign: str,
        spatial_dims: int,
        max_memory: float | None,
        pass_bytes_per_voxel: float | None,
        protocol: ProtocolLike,
        method_options: Mapping[str, Any],
        precision: str = "auto",
        prediction: Tensor | None = None,
    ) -> _ExplainRequest:
        """Check every argument (messages name it); raises ValueError as :func:`explain` documents."""
        name = resolve_method_name(method)
        spec = get_method(name) if isinstance(name, str) else None
        if spec is not None:
            check_options(name, method_options, spec.options)
        resolved_protocol, options = _apply_protocol(spec, protocol, method_options)
        sign = look_up_option("sign", sign, ("abs", "positive", "negative"))
        spatial_dims = positive_int("spatial_dims", spatial_dims)
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}")
        x = check_image(image, spatial_dims)
        spatial = tuple(x.shape[2:])
        window = check_window(roi_size, spatial_dims, sw_batch_size, overlap, mode, sigma_scale)
        if targets is not None:
            check_targets(targets, 2**62)  # types, sign and repeats now; the range once C is known
        if spec is not None and spec.check is not None:
            spec.check(options, spatial)
        device = _model_device(model, x.device)
        limit = available_memory(device) if max_memory is None else float(max_memory)
        if not limit > 0:
            raise ValueError(f"Expected argument `max_memory` to be a positive number of bytes, but got {max_memory!r}")
        region_map = None if regions is None else check_label_map("regions", regions, spatial, device)
        fixed = None if prediction is None else check_label_map("prediction", prediction, spatial, device)
        if fixed is not None and fixed.numel() and int(fixed.min()) < 0:
            raise ValueError(f"Expected argument `prediction` to hold class ids >= 0, but found {int(fixed.min())}")
        if num_regions is not None:
            num_regions = positive_int("num_regions", num_regions)
            if region_map is not None and region_map.numel() and int(region_map.max()) >= num_regions:
                raise ValueError(f"Expected argument `regions` to hold labels < num_regions={num_regions}, but found {int(region_map.max())}")
        masks = {}
        for key, m in (extra_masks or {}).items():
            masks[str(key)] = check_label_map(f"extra_masks[{key!r}]", torch.as_tensor(m).long(), spatial, device).bool()
        choice = precision_choice(precision, device)
        used = choice.used
        if pass_bytes_per_voxel is None:  # one probe pass per model (cached), as the model will run
            pass_bytes_per_voxel = probe_pass_bytes_per_voxel(
                with_precision(model, used, device)[0], spatial, None if window is None else window["roi_size"],
                device=device, dtype=x.dtype, max_memory=limit)
        return cls(name=name, spec=spec, options=options, protocol=resolved_protocol, image=x, window=window, targets=targets,
                   region_map=region_map, num_regions=num_regions, masks=masks, sign=sign, device=device,
                   memory_limit=limit, pass_bytes_per_voxel=float(pass_bytes_per_voxel), precision=used,
                   precision_reason=choice.why, prediction=fixed)

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.image.shape[2:])

    @property
    def method_name(self) -> str:
        return self.name if isinstance(self.name, str) else self.name.__name__

    def memory_lower_bound(self) -> tuple[int, int]:
        """``(classes, targets)`` known before the first pass: the requested ones, or one of each."""
        if self.targets is None:
            return 1, 1
        return max(self.targets) + 1, max(1, len(self.targets))

    def check_memory(self, num_classes: int, num_targets: int) -> None:
        """Refuse (:class:`~agg2exp_lightning.explain.memory.ExplanationTooLarge`) an explanation whose
        estimated peak exceeds the memory limit."""
        cost_name = self.name if isinstance(self.name, str) else "captum"  # a Captum class is costed as a gradient method
        roi = None if self.window is None else tuple(self.window["roi_size"])
        estimate = explain_memory_estimate(
            self.spatial, cost_name, num_classes=num_classes, num_targets=num_targets, roi_size=roi,
            sw_batch_size=self.window["sw_batch_size"] if self.window is not None else 1,
            batch_size=self.options.get("batch_size", 4),
            pass_bytes_per_voxel=self.pass_bytes_per_voxel, dtype_bytes=self.image.element_size(),
        )
        check_explain_memory(estimate, self.memory_limit, spatial=self.spatial, method=cost_name, roi_size=roi)


@dataclass
class _Passes:
    """What the model passes produced: the maps and what the aggregation needs of the prediction."""

    attributions: Tensor
    diagnostics: dict[str, Any]
    labels: Tensor
    num_classes: int
    target_ids: list[int]
    predictor: Predictor
    plan: Any


def _run_passes(model: nn.Module, request: _ExplainRequest, *, eval_mode: bool, progress: bool) -> _Passes:
    """Predict once, check the targets and the memory against the real class count, then attribute."""
    from agg2exp_lightning.analysis.evidence import softmax_summary

    x = request.image.to(request.device)
    window = request.window
    with explanation_mode(model, eval_mode=eval_mode):
        model = with_precision(model, request.precision, request.device)[0]
        plan = None
        if window is not None:
            plan = window_plan(request.spatial, window["roi_size"], sw_batch_size=window["sw_batch_size"], overlap=window["overlap"],
                               mode=window["mode"], sigma_scale=window["sigma_scale"], device=request.device, dtype=x.dtype)
        predictor = Predictor(model, plan, [], progress=bool(progress))
        logits = predictor.predict(x, keep_graph=request.spec is not None and request.spec.keep_graph)
        num_classes = int(logits.shape[1])
        target_ids = check_targets(request.targets, num_classes)
        request.check_memory(num_classes, len(target_ids))
        predictor.targets = target_ids
        if request.prediction is not None:
            if int(request.prediction.max()) >= num_classes:
                raise ValueError(f"Expected argument `prediction` to hold class ids < {num_classes} (the model's classes), "
                                 f"but found {int(request.prediction.max())}")
            predictor.labels = request.prediction
        labels = predictor.labels
        proxy_at_image = proxy_output(logits, labels, target_ids)[0]
        confidence, entropy = softmax_summary(logits, labels, num_classes)  # the audit's prediction evidence
        del logits
        attr, diag = _attribute(request.name, request.spec, predictor, x, labels, num_classes, target_ids, proxy_at_image, plan, window,
                                request.options)
        diag["prediction_confidence"], diag["prediction_entropy"] = confidence.tolist(), entropy.tolist()
    return _Passes(attributions=attr, diagnostics=diag, labels=labels, num_classes=num_classes, target_ids=target_ids,
                   predictor=predictor, plan=plan)


def _aggregate(request: _ExplainRequest, passes: _Passes, *, keep_attributions: bool, start: float) -> ExplanationResult:
    """RoI importance (mass shares and means) over the regions, and the result with its diagnostics
    (``start``: :func:`time.perf_counter` when the call began)."""
    labels, num_classes, target_ids = passes.labels, passes.num_classes, passes.target_ids
    present = set(torch.unique(labels).tolist())
    num_regions = request.num_regions
    if request.region_map is None:
        region_map, n_regions = labels, num_classes if num_regions is None else num_regions
    else:
        region_map = request.region_map
        top = int(region_map.max()) + 1 if region_map.numel() else 0
        n_regions = max(num_classes, top) if num_regions is None else num_regions
    masks = request.masks
    mask_stack = torch.stack(list(masks.values())) if masks else None
    attr = passes.attributions
    roi = roi_importance(attr, region_map, n_regions, "mass", request.sign, extra_masks=mask_stack,
                         empty_regions=request.protocol.empty_regions)
    roi_mean = roi_importance(attr, region_map, n_regions, "mean", request.sign, extra_masks=mask_stack)
    diag = passes.diagnostics
    counter = passes.predictor.counter
    diag.update(counter.as_dict())
    diag["protocol"] = request.protocol.as_dict()
    diag["precision"] = request.precision
    diag["precision_reason"] = request.precision_reason
    diag["targets_absent"] = [c for c in target_ids if c not in present]
    if passes.plan is not None:
        diag["windows"] = passes.plan.num_windows
    seconds = time.perf_counter() - start
    log.debug("explain(%s): %d targets in %.2f s, %s", request.method_name, len(target_ids), seconds, counter.as_dict())
    return ExplanationResult(
        attributions=attr.detach() if keep_attributions else None,
        roi=roi,
        roi_mean=roi_mean,
        targets=target_ids,
        prediction=labels.detach(),
        seconds=seconds,
        method=request.method_name,
        diagnostics=diag,
        region_names=[str(i) for i in range(n_regions)] + list(masks),
    )


def _apply_protocol(spec: AttributionMethod | None, protocol: ProtocolLike, options: Mapping[str, Any]) -> tuple[Protocol, dict[str, Any]]:
    """The protocol (method options that set one of its choices recorded as overrides) and the options
    with the protocol's choices filled in (the method table's ``protocol_options``: the KernelSHAP
    ``spread``, the IG ``integration``)."""
    resolved = resolve_protocol(protocol)
    options = dict(options)
    for option, setting in ({} if spec is None else spec.protocol_options).items():
        if option in options:
            value = look_up_option(option, options[option], SETTING_CHOICES[setting])
            resolved = resolved.with_overrides(**{setting: value})
        options[option] = getattr(resolved, setting)
    return resolved, options


def _attribute(
    name: Any,
    spec: AttributionMethod | None,
    predictor: Predictor,
    x: Tensor,
    labels: Tensor,
    num_classes: int,
    targets: list[int],
    proxy_at_image: Tensor,
    plan: Any,
    window: Mapping[str, Any] | None,
    options: Mapping[str, Any],
) -> tuple[Tensor, dict[str, Any]]:
    """Dispatch to the method's implementation (its row of the method table); ``([T, *S], diagnostics)``."""
    if spec is None:
        return captum_attributions(name, predictor.model, x, labels, num_classes, targets, plan, window, options)
    engine = {"proxy_at_image": proxy_at_image, "labels": labels}
    return spec.function(predictor, x, **{k: engine[k] for k in spec.engine_values}, **options)

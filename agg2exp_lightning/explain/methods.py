"""The attribution-method table: one row per method, read by everything that needs to know a method.

A row (:class:`AttributionMethod`) holds a method's implementation, the keyword options it takes (read
from the implementation's signature, never copied by hand), its aliases, how the memory estimate costs
it and its flags. The engine (:func:`~agg2exp_lightning.explain.explain`), the memory estimate
(:mod:`~agg2exp_lightning.explain.memory`), the validation of names and options, the command lines and
the benchmarks all read this table, so a new method is one module with its function and one call of
:func:`register_method`.

An implementation is called as ``function(predictor, image, **engine_values, **options)`` and returns
``(attributions [T, *S], diagnostics)``:

- ``predictor`` (:class:`~agg2exp_lightning.explain._predictor.Predictor`) runs the model with the
  prediction's mask held fixed: ``predictor.gradients(x)`` gives ``[B, T, *S]`` proxy gradients of
  every target, ``predictor.proxies(x)`` the ``[B, T]`` proxies.
- ``image`` is the ``[1, 1, *S]`` scan.
- ``engine_values``: the keyword-only parameters of the function named in :data:`ENGINE_VALUES` are
  filled by the engine: ``proxy_at_image`` (``[T]`` proxies of the unperturbed scan) and ``labels``
  (``[*S]`` predicted label map).
- every other keyword-only parameter is an option the user may pass to ``explain``. A function that
  forwards ``**options`` to another function names it with ``forwards_to``, whose keyword-only
  parameters are options too.

Example:
    >>> from agg2exp_lightning.explain.methods import get_method
    >>> spec = get_method("sg")
    >>> spec.name, spec.cost, "n_samples" in spec.options
    ('smoothgrad', 'gradient', True)
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agg2exp_lightning.utils.options import did_you_mean, look_up_option, positive_int

__all__ = [
    "ENGINE_VALUES",
    "METHODS",
    "AttributionMethod",
    "CostKind",
    "available_methods",
    "get_method",
    "method_options",
    "register_method",
    "resolve_method_name",
    "unregister_method",
]

#: How the memory estimate costs a method: ``"gradient"`` (forward and backward passes over batches of
#: input samples, a gradient accumulator) or ``"perturbation"`` (forward passes only, over batches of
#: perturbed inputs, as KernelSHAP).
CostKind = Literal["gradient", "perturbation"]
#: Keyword-only parameters of an implementation that the engine fills (not user options).
ENGINE_VALUES: frozenset[str] = frozenset({"proxy_at_image", "labels"})


@dataclass(frozen=True)
class AttributionMethod:
    """One row of the method table (build it with :func:`register_method`).

    Attributes:
        name: canonical name (lower case, ``_`` between words).
        function: the implementation (see the module docstring for its call).
        options: keyword options it accepts (read from the signature of ``function`` and ``forwards_to``).
        defaults: their defaults, where the signature gives one.
        cost: :data:`CostKind` of the memory estimate.
        aliases: other spellings accepted for ``name``.
        keep_graph: the prediction pass keeps its autograd graph, so the method reuses it (one sample
            through the model: the memory estimate counts a batch of 1 whatever ``batch_size`` says).
        protocol_options: ``{option: protocol setting}``: options whose default a
            :class:`~agg2exp_lightning.protocols.Protocol` gives (an option given overrides the setting).
        check: ``check(options, spatial)`` run before any model pass; raises ``ValueError`` for options
            that cannot work on a volume of that size.
        engine_values: which of :data:`ENGINE_VALUES` the implementation takes.
    """

    name: str
    function: Callable[..., tuple[Any, dict[str, Any]]]
    options: frozenset[str]
    defaults: Mapping[str, Any]
    cost: CostKind
    aliases: tuple[str, ...] = ()
    keep_graph: bool = False
    protocol_options: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any], Sequence[int]], None] | None = None
    engine_values: frozenset[str] = frozenset()


_TABLE: dict[str, AttributionMethod] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _keyword_parameters(fn: Callable[..., Any], keyword_only: bool = False) -> tuple[dict[str, Any], bool]:
    """``({name: default or inspect.Parameter.empty}, takes **kwargs)`` of ``fn``'s keyword parameters
    after the first two positional ones (predictor, image); ``keyword_only``: those after ``*`` only."""
    params = list(inspect.signature(fn).parameters.values())
    out, var_kw = {}, False
    positional = 0
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            out[p.name] = p.default
        elif p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
            if positional > 2 and not keyword_only:
                out[p.name] = p.default
    return out, var_kw


def register_method(
    name: str,
    function: Callable[..., tuple[Any, dict[str, Any]]],
    *,
    cost: CostKind,
    aliases: Sequence[str] = (),
    keep_graph: bool = False,
    protocol_options: Mapping[str, str] | None = None,
    check: Callable[[Mapping[str, Any], Sequence[int]], None] | None = None,
    forwards_to: Callable[..., Any] | None = None,
    replace: bool = False,
) -> AttributionMethod:
    """Add an attribution method to the table, so that ``explain(..., method=name)``, the audit
    (``--method name``), the method options and the memory estimate know it.

    Args:
        name: canonical name (made lower case; ``-`` and spaces become ``_``).
        function: ``function(predictor, image, *, <engine values>, <options>) -> (attributions [T, *S],
            diagnostics dict)``; see the module docstring.
        cost: ``"gradient"`` or ``"perturbation"`` (:data:`CostKind`), for the memory estimate.
        aliases: other spellings.
        keep_graph: reuse the prediction pass's graph (as the vanilla gradient does).
        protocol_options: ``{option: protocol setting}`` whose default a protocol gives.
        check: ``check(options, spatial)`` run before any pass (raise ``ValueError``).
        forwards_to: the function that ``function``'s ``**options`` go to; its keyword options count too.
        replace: allow replacing a registered method of the same name.

    Returns:
        The new row.

    Raises:
        ValueError: a bad name or cost, a name or alias already taken (without ``replace``), or a
            function that takes ``**options`` without ``forwards_to``.

    Example:
        >>> import torch
        >>> def gradient_sign(predictor, image, *, batch_size=1):
        ...     return predictor.gradients(image)[0].sign(), {}
        >>> spec = register_method("gradient_sign_doc", gradient_sign, cost="gradient")
        >>> sorted(spec.options)
        ['batch_size']
        >>> unregister_method("gradient_sign_doc")
    """
    if not isinstance(name, str) or not _key(name):
        raise ValueError(f"Expected argument `name` to be a non-empty string, but got {name!r}")
    canonical = _key(name)
    cost = look_up_option("cost", cost, ("gradient", "perturbation"))
    if not callable(function):
        raise ValueError(f"Expected argument `function` to be callable, but got {function!r}")
    params, var_kw = _keyword_parameters(function)
    if var_kw:
        if forwards_to is None:
            raise ValueError(f"method {canonical!r}: its function takes **options; name where they go with `forwards_to`")
        forwarded, _ = _keyword_parameters(forwards_to, keyword_only=True)
        params = {**{k: v for k, v in forwarded.items() if k not in params}, **params}
    engine = frozenset(params) & ENGINE_VALUES
    options = {k: v for k, v in params.items() if k not in ENGINE_VALUES}
    spellings = [_key(a) for a in aliases]
    taken = [s for s in [canonical, *spellings] if (s in _TABLE or s in _ALIASES)
             and not (replace and (s == canonical or _ALIASES.get(s) == canonical))]
    if taken:
        raise ValueError(f"method {canonical!r}: the name(s) {taken} are taken (pass replace=True to replace a method)")
    unknown = sorted(set(protocol_options or {}) - set(options))
    if unknown:
        raise ValueError(f"method {canonical!r}: protocol_options name options it does not take: {unknown}")
    if replace:
        unregister_method(canonical, missing_ok=True)
    spec = AttributionMethod(
        name=canonical, function=function, options=frozenset(options),
        defaults={k: v for k, v in options.items() if v is not inspect.Parameter.empty}, cost=cost,
        aliases=tuple(spellings), keep_graph=bool(keep_graph), protocol_options=dict(protocol_options or {}), check=check,
        engine_values=engine,
    )
    _TABLE[canonical] = spec
    _ALIASES.update({a: canonical for a in spellings})
    return spec


def unregister_method(name: str, *, missing_ok: bool = False) -> None:
    """Remove a registered method and its aliases (``missing_ok``: no error when there is none)."""
    canonical = _key(name)
    spec = _TABLE.pop(canonical, None)
    if spec is None:
        if missing_ok:
            return
        raise ValueError(f"Expected a registered method, got {name!r}")
    for alias in spec.aliases:
        _ALIASES.pop(alias, None)


def available_methods() -> tuple[str, ...]:
    """Canonical names of every registered method, the paper's five first."""
    return tuple(_TABLE)


def resolve_method_name(method: Any) -> Any:
    """The canonical name of an attribution method, or the Captum class itself.

    Args:
        method: a registered name (:func:`available_methods`), an alias (``vg``, ``sg``, ``ig``,
            ``ks_cubes``, ``ks_semantic``; case and ``-``/space insensitive), or a Captum attribution class.

    Returns:
        The canonical name (``str``), or ``method`` unchanged when it is a class.

    Raises:
        ValueError: an unknown name (the message suggests the nearest valid one).

    Example:
        >>> resolve_method_name("SG")
        'smoothgrad'
    """
    if isinstance(method, type):
        if not callable(getattr(method, "attribute", None)):
            raise ValueError(
                f"Expected argument `method` to be a method name or a Captum attribution class with an "
                f"`attribute` method, but got class {method.__name__}"
            )
        return method
    if not isinstance(method, str):
        raise ValueError(f"Expected argument `method` to be a string or a Captum attribution class, but got {method!r}")
    key = _key(method)
    if key in _TABLE:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    valid = list(_TABLE) + list(_ALIASES)
    raise ValueError(
        f"Expected argument `method` to be one of {list(_TABLE)} (or an alias {sorted(_ALIASES)}), got {method!r}{did_you_mean(key, valid)}"
    )


def get_method(method: str) -> AttributionMethod:
    """The table row of a method by name or alias (raises ``ValueError`` as :func:`resolve_method_name`)."""
    name = resolve_method_name(method)
    if not isinstance(name, str):
        raise ValueError(f"Expected a method name, but got class {name.__name__} (a Captum class has no table row)")
    return _TABLE[name]


def method_options(method: str) -> frozenset[str]:
    """The keyword options ``method`` accepts (empty for an unknown name)."""
    try:
        return get_method(method).options
    except ValueError:
        return frozenset()


# ---- the paper's five methods ----------------------------------------------------------------------------
def _check_cube_budget(options: Mapping[str, Any], spatial: Sequence[int]) -> None:
    """KernelSHAP over cubes needs at least as many coalitions as cubes, one more for the captum estimator's
    intercept (else the regression is undetermined)."""
    from agg2exp_lightning.explain._kernelshap import cube_mask, minimum_samples

    spec = _TABLE["kernelshap_cubes"]
    value = lambda key: options.get(key, spec.defaults[key])  # noqa: E731
    n_cubes = cube_mask(tuple(spatial), value("cubes_per_axis"), value("cube_mask"))[1]
    n, estimator = value("n_samples"), value("estimator")
    needed = minimum_samples(n_cubes, estimator)
    if positive_int("n_samples", n) < needed:
        raise ValueError(f"Expected argument `n_samples` >= {needed} (the number of cubes, {n_cubes}"
                         f"{', plus the intercept' if estimator == 'captum' else ''}) so that the Shapley regression is "
                         f"determined, but got {n}")


def _register_paper_methods() -> None:
    from agg2exp_lightning.explain import _gradients, _kernelshap, _kernelshap_features

    register_method("vanilla_gradient", _gradients.vanilla_gradient, cost="gradient", aliases=("vg", "gradient", "saliency"),
                    keep_graph=True)
    register_method("smoothgrad", _gradients.smoothgrad, cost="gradient", aliases=("sg", "smooth_grad"))
    register_method("integrated_gradients", _gradients.integrated_gradients, cost="gradient", aliases=("ig", "integrated_gradient"),
                    protocol_options={"integration": "ig_integration"})
    kernelshap_protocol = {"spread": "kernelshap_spread", "estimator": "kernelshap_estimator"}
    register_method("kernelshap_cubes", _kernelshap_features.kernelshap_cubes, cost="perturbation",
                    aliases=("ks_cubes", "kernel_shap_cubes"), protocol_options={**kernelshap_protocol, "cube_mask": "cube_mask"},
                    check=_check_cube_budget, forwards_to=_kernelshap.kernelshap)
    register_method("kernelshap_semantic", _kernelshap_features.kernelshap_semantic, cost="perturbation",
                    aliases=("ks_semantic", "kernel_shap_semantic"),
                    protocol_options={**kernelshap_protocol, "features": "semantic_features"}, forwards_to=_kernelshap.kernelshap)


_register_paper_methods()
#: The paper's five methods, in its order (every registered one: :func:`available_methods`).
METHODS: tuple[str, ...] = available_methods()

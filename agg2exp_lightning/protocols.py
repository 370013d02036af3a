"""Evaluation protocols: named bundles of the choices that decide an explanation's and a metric's numbers.

One place defines each protocol. :data:`PROTOCOLS` holds two:

- ``"paper"``: exactly what the Agg2Exp paper (Chrabąszcz, Baniecki et al., WACV 2025) published, as its
  public code (MI2DataLab/agg2exp) does it: KernelSHAP is Captum's estimator (coalitions drawn from the
  Shapley kernel without their complements, weight 1 each, the full and empty coalitions weighted 1e6,
  a linear regression with an intercept), over the authors' cubes (side ``min(x, y, z) //
  int(n ** (1/3))``, ids modulo ``n``) or over every label id from the lowest to the highest predicted
  one (absent labels are features too), and writes a feature's value into every voxel of the feature
  (``broadcast``, as Captum); the noisy copies of the sensitivity metric are explained by KernelSHAP
  with the clean scan's prediction as feature and proxy mask; faithfulness recomputes the predicted mask on every perturbed
  input; volumes are not cropped to the body; sensitivity draws the SmoothGrad noise and the KernelSHAP
  coalitions of every noisy copy independently; Integrated Gradients averages 20 equally weighted
  points from alpha=0 to alpha=1 inclusive; a region absent from a scan gets share 0 and counts in the
  cohort mean; the dependency graph keeps, per explained class, the strongest non-background regions
  while their cumulative share stays <= 0.35; the classes are clustered on ``max - sqrt(share)`` as R's
  ``as.dist`` reads the (non-symmetric) matrix.
- ``"corrected"`` (the default): the toolkit's own choices. KernelSHAP samples coalitions with their
  complements and solves the regression under the efficiency constraint (lower variance; the values
  sum to ``f(x) - f(baseline)`` exactly), over balanced contiguous cubes (every cube the same size up to
  one voxel per axis, one id each) or over the labels present in the prediction, and spreads ``phi_j`` evenly over
  feature ``j``'s voxels (``divide``), so a map sums to the Shapley values and large regions are not
  favoured by their size; each noisy copy of the sensitivity metric is explained with its own prediction
  (as every explanation is); faithfulness holds the mask of the unperturbed prediction fixed (the proxy
  that was explained, not a different one per perturbation); volumes are cropped to the body (N is the
  body, not the air around it); sensitivity uses the same noise and coalitions for the clean and the
  noisy copies (common random numbers: the distance reflects the input noise alone); Integrated
  Gradients uses Gauss-Legendre points (exact for polynomials of degree 2n-1); a region absent from a
  scan has no share (NaN), so it does not pull the cohort mean towards 0; the dependency graph keeps
  each class's 5 strongest regions (the authors' other published rule: the cumulative 0.35 rule keeps
  almost every region when the background holds most of the mass, as with SmoothGrad on TSV2); the
  clustering uses the symmetrised similarity (independent of the alphabetical order of the classes).

Any single setting can be overridden on top of a protocol (:func:`get_protocol` with keywords); the
result records which settings were overridden. Every output of the toolkit records
:meth:`Protocol.as_dict` (``summary.json``, the comparison's ``settings.json``, the monitors' tables).

Example:
    >>> get_protocol("paper").kernelshap_spread
    'broadcast'
    >>> get_protocol("paper", empty_regions="nan").label
    'paper (empty_regions=nan)'
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Union

from agg2exp_lightning.utils import look_up_option

__all__ = ["ANALYSIS_SETTINGS", "DEFAULT_PROTOCOL", "PROTOCOLS", "SETTING_CHOICES", "Protocol", "ProtocolLike", "get_protocol", "resolve_protocol"]

#: Allowed values of each setting (checked when a protocol is made or overridden).
SETTING_CHOICES: dict[str, tuple[Any, ...]] = {
    "kernelshap_spread": ("broadcast", "divide"),
    "faithfulness_mask": ("fixed", "recomputed"),
    "crop_to_body": (True, False),
    "sensitivity_draws": ("independent", "shared"),
    "ig_integration": ("gausslegendre", "uniform_inclusive", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"),
    "empty_regions": ("zero", "nan"),
    "graph_rule": ("cumulative", "top_k"),
    "clustering": ("paper", "symmetric"),
    "kernelshap_estimator": ("captum", "constrained"),
    "cube_mask": ("modulo", "balanced"),
    "semantic_features": ("label_range", "present"),
    "sensitivity_prediction": ("clean", "noisy"),
}

#: The settings that shape the analysis of a table of aggregated explanations; the others shape how the
#: explanations are made, so they mean nothing to an audit of a table made elsewhere.
ANALYSIS_SETTINGS: tuple[str, ...] = ("empty_regions", "graph_rule", "graph_cumulative_share", "graph_top_k", "clustering")


@dataclass(frozen=True)
class Protocol:
    """The settings of one protocol (see the module docstring for what each choice means).

    Attributes:
        name: the registry name it was made from.
        kernelshap_spread: ``"broadcast"`` (phi_j in every voxel of feature j) or ``"divide"`` (phi_j/|S_j|).
        faithfulness_mask: ``"recomputed"`` (mask of each perturbed prediction) or ``"fixed"``.
        crop_to_body: crop the preprocessed volumes to the body before explaining and evaluating.
        sensitivity_draws: ``"independent"`` noise/coalitions per noisy copy, or ``"shared"`` with the clean one.
        ig_integration: Integrated Gradients rule (``"uniform_inclusive"``: n equally weighted points
            ``linspace(0, 1, n)``; or one of :data:`~agg2exp_lightning.explain.IG_RULES`).
        empty_regions: share of a region absent from a scan: ``"zero"`` (counted in cohort means) or ``"nan"``.
        graph_rule: dependency graph per explained class: ``"cumulative"`` (strongest regions while the
            cumulative share stays <= ``graph_cumulative_share``) or ``"top_k"`` (``graph_top_k`` strongest).
        graph_cumulative_share: the cumulative-share limit (paper: 0.35 on TSV2).
        graph_top_k: regions per class of the ``top_k`` rule (paper's other graph: 5).
        clustering: distance of the class clustering: ``"paper"`` (``max - sqrt(share)`` read as R's
            ``as.dist`` reads a non-symmetric matrix: its lower triangle in alphabetical class order) or
            ``"symmetric"`` (the mean of both directions).
        kernelshap_estimator: ``"captum"`` (Captum's ``KernelShap``: kernel-sampled coalitions without
            complements, weight 1, full and empty coalitions weighted 1e6, linear regression with an
            intercept) or ``"constrained"`` (paired coalitions, regression under the efficiency constraint).
        cube_mask: KernelSHAP cubes: ``"modulo"`` (the authors' ``create_cubical_mask``: side
            ``min(S) // int(n ** (1/3))`` with ``n = cubes_per_axis ** 3`` components, ids modulo ``n``,
            smaller edge cubes) or ``"balanced"`` (contiguous cubes differing by at most one voxel per axis).
        semantic_features: semantic KernelSHAP's features: ``"label_range"`` (every label id from the
            lowest to the highest predicted one, absent ones included, as Captum numbers a feature mask)
            or ``"present"`` (the predicted labels only).
        sensitivity_prediction: KernelSHAP of a noisy copy in the sensitivity metric uses ``"clean"`` (the
            clean scan's prediction as feature and proxy mask) or ``"noisy"`` (the copy's own prediction).
        overridden: names of the settings changed from the registry's protocol.
    """

    name: str
    kernelshap_spread: Literal["broadcast", "divide"]
    faithfulness_mask: Literal["fixed", "recomputed"]
    crop_to_body: bool
    sensitivity_draws: Literal["independent", "shared"]
    ig_integration: str
    empty_regions: Literal["zero", "nan"]
    graph_rule: Literal["cumulative", "top_k"] = "cumulative"
    graph_cumulative_share: float = 0.35
    graph_top_k: int = 5
    clustering: Literal["paper", "symmetric"] = "paper"
    kernelshap_estimator: Literal["captum", "constrained"] = "constrained"
    cube_mask: Literal["modulo", "balanced"] = "balanced"
    semantic_features: Literal["label_range", "present"] = "present"
    sensitivity_prediction: Literal["clean", "noisy"] = "noisy"
    overridden: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, choices in SETTING_CHOICES.items():
            look_up_option(f"protocol setting `{key}`", getattr(self, key), choices)
        share = self.graph_cumulative_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"Expected protocol setting `graph_cumulative_share` to be a number in (0, 1], but got {share!r}")
        k = self.graph_top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Expected protocol setting `graph_top_k` to be an integer >= 1, but got {k!r}")

    @property
    def label(self) -> str:
        """The name, with the overridden settings in brackets (``"paper (empty_regions=nan)"``)."""
        if not self.overridden:
            return self.name
        return f"{self.name} ({', '.join(f'{k}={getattr(self, k)}' for k in self.overridden)})"

    def settings(self) -> dict[str, Any]:
        """The individual settings (without the name)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "overridden")}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record: ``{"name", "label", "overridden", "settings": {...}}``."""
        return {"name": self.name, "label": self.label, "overridden": list(self.overridden), "settings": self.settings()}

    def with_overrides(self, **overrides: Any) -> Protocol:
        """This protocol with some settings changed (recorded in :attr:`overridden`).

        Raises:
            ValueError: an unknown setting (with the list of settings) or a value not allowed for it.
        """
        valid = list(self.settings())
        changed = list(self.overridden)
        for key, value in overrides.items():
            look_up_option("protocol setting", key, valid)
            if value != getattr(self, key) and key not in changed:
                changed.append(key)
        return dataclasses.replace(self, **overrides, overridden=tuple(sorted(changed)))


#: The registry: one entry per named protocol.
PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol(
        name="paper", kernelshap_spread="broadcast", faithfulness_mask="recomputed", crop_to_body=False,
        sensitivity_draws="independent", ig_integration="uniform_inclusive", empty_regions="zero",
        graph_rule="cumulative", graph_cumulative_share=0.35, graph_top_k=5, clustering="paper",
        kernelshap_estimator="captum", cube_mask="modulo", semantic_features="label_range", sensitivity_prediction="clean",
    ),
    "corrected": Protocol(
        name="corrected", kernelshap_spread="divide", faithfulness_mask="fixed", crop_to_body=True,
        sensitivity_draws="shared", ig_integration="gausslegendre", empty_regions="nan",
        graph_rule="top_k", graph_cumulative_share=0.35, graph_top_k=5, clustering="symmetric",
        kernelshap_estimator="constrained", cube_mask="balanced", semantic_features="present", sensitivity_prediction="noisy",
    ),
}
#: The protocol used when none is named.
DEFAULT_PROTOCOL = "corrected"

ProtocolLike = Union[str, Protocol, None]


def get_protocol(name: str = DEFAULT_PROTOCOL, **overrides: Any) -> Protocol:
    """The registered protocol ``name``, with any settings overridden.

    Args:
        name: a key of :data:`PROTOCOLS` (``"paper"`` or ``"corrected"``; case and ``-`` are forgiven).
        **overrides: settings to change, e.g. ``empty_regions="nan"``.

    Returns:
        A frozen :class:`Protocol`.

    Raises:
        ValueError: an unknown name (listing the valid ones and the nearest), setting or value.

    Example:
        >>> get_protocol("corrected").faithfulness_mask
        'fixed'
    """
    key = look_up_option("protocol", name, PROTOCOLS, normalise=True)
    protocol = PROTOCOLS[key]
    return protocol.with_overrides(**overrides) if overrides else protocol


def resolve_protocol(protocol: ProtocolLike = None, **overrides: Any) -> Protocol:
    """A :class:`Protocol` from a name, a protocol or ``None`` (the default), with overrides applied."""
    if protocol is None:
        protocol = DEFAULT_PROTOCOL
    if isinstance(protocol, Protocol):
        return protocol.with_overrides(**overrides) if overrides else protocol
    if isinstance(protocol, str):
        return get_protocol(protocol, **overrides)
    raise ValueError(f"Expected `protocol` to be one of {list(PROTOCOLS)} or a Protocol, but got {protocol!r}")

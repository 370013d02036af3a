"""The audit's settings: one frozen dataclass, built and checked once, passed whole to every run function.

:class:`AuditSettings` holds everything that decides an audit's results (the attribution method and its
options, the splits, the resampling and windows, the protocol, the anomaly detector and its calibration,
the analysis' sizes). It is built once, from the command line (:func:`~agg2exp_lightning.audit.cli.main`),
from :func:`~agg2exp_lightning.audit.audit` or from a JSON/YAML file (:meth:`AuditSettings.from_file`);
every value is checked in :meth:`AuditSettings.__post_init__` (the one place), and the object goes whole
to :func:`~agg2exp_lightning.audit.checkpoint_audit.run_checkpoint_audit`,
:func:`~agg2exp_lightning.audit.scan_audit.run_scan_audit`, :func:`~agg2exp_lightning.audit.table_audit.run_table_audit`
and :func:`~agg2exp_lightning.analysis.cohort.analyze_cohort`. Its fields are recorded in ``audit.json``
(:meth:`AuditSettings.fingerprint_fields`), so a folder resumes only the audit of the same settings.

What is not here: where the inputs and outputs are (model, data, ``--out``), how the work runs (devices,
workers) and where it is logged (W&B), none of which changes a result.

Adding a setting is one edit: a field here with its default and a line in the class docstring and, if
its values need checking, a method ``_check_<field>`` (raise ``ValueError``; normalise with ``self._put``);
then read ``settings.<field>`` where it is used. A
field is fingerprinted into ``audit.json`` unless its ``metadata`` puts it in the ``"output"`` group (outputs
that change no result, such as ``save_maps``); ``"explanation"`` fields are fingerprinted by model audits only. The command line offers it once a flag is added in
:func:`~agg2exp_lightning.audit.cli.build_parser` under the field's name (``--n-extremes`` for ``n_extremes``).

Example:
    >>> s = AuditSettings(method="sg", contamination=0.1)
    >>> s.method_name, s.contamination, s.detector
    ('smoothgrad', 0.1, 'isolation_forest')
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from agg2exp_lightning.analysis.anomaly import (
    DEFAULT_CONTAMINATION,
    DEFAULT_RANDOM_STATE,
    DEFAULT_SCORE_TAIL,
    check_contamination,
    check_score_tail,
)
from agg2exp_lightning.analysis.detectors import DEFAULT_DETECTOR, DEFAULT_SCORE_DETECTOR, get_detector
from agg2exp_lightning.protocols import DEFAULT_PROTOCOL, Protocol, resolve_protocol
from agg2exp_lightning.utils.options import did_you_mean, positive_int

__all__ = ["AuditSettings", "SettingError", "checked_settings"]


class SettingError(ValueError):
    """A bad value of one setting; ``field`` names it (the command line turns it into its flag)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

#: Field groups (``metadata["group"]``): what explains the scans (model audits only), what analyses the
#: table (every audit; the default group), and outputs that change no result (not fingerprinted).
_EXPLANATION = {"group": "explanation"}
_OUTPUT = {"group": "output"}


@dataclass(frozen=True)
class AuditSettings:
    """Every setting that decides an audit's results (paper defaults), checked once when built.

    Attributes:
        method: attribution method as given (name or alias; ``method_name`` is the canonical name).
        method_options: its keyword options (``--method-option``), checked against the method table and
            the keyword options of :func:`~agg2exp_lightning.explain.explain`.
        targets: classes to explain, by name or channel id (``None``: every class).
        split: the split to audit.
        reference_split: the split to fit the detectors on and calibrate against; ``"auto"``: ``train``
            where the data has one and another split is audited; ``None``: the audited scans.
        spacing: resampling spacing in mm (``None``: the model source's, else 1.5).
        roi_size: sliding-window size of the explanations (``None``: the model source's, else whole volumes).
        protocol: ``"corrected"`` or ``"paper"`` or a :class:`~agg2exp_lightning.protocols.Protocol`
            (stored resolved).
        merges: regions joined before the analysis: ``--merge`` specs or ``{name: members}`` (checked
            against the model's regions by the run functions, which know them).
        random_state: seed of the per-class detectors and of the cross-fitting folds.
        contamination: share of clean scans the scan-level flag may raise, in ``(0, 0.5]``.
        detector: per-class anomaly detector (:data:`~agg2exp_lightning.analysis.detectors.DETECTORS`).
        score_detector: the detector of the scan-level score's families and classes (default the robust distance).
        score_tail: how a per-class score beyond every reference score is read (``"exponential"``, default, or
            ``"conformal"``; :func:`~agg2exp_lightning.analysis.anomaly.tail_p`).
        evidence: evidence families of the scan-level score (``"shares,prediction,attribution,image"`` or a list;
            :mod:`~agg2exp_lightning.analysis.evidence`); ``None``: every family, the paper protocol the
            shares alone (stored resolved, as a tuple).
        n_dependencies: how many region -> class dependencies to report.
        n_extremes: how many most / least anomalous scans to report per class.
        seed: seed of the permutation bias tests and the bootstrap.
        n_bootstrap: bootstrap resamples of the score tests' CIs (``None``: the analysis' default).
        save_maps: write each audited scan's maps as NIfTI (not fingerprinted).
        figures_for: scan ids drawn in three views besides the worklist's (not fingerprinted).
        method_name: the canonical method name (derived).
    """

    method: str = field(default="smoothgrad", metadata=_EXPLANATION)
    method_options: Mapping[str, Any] = field(default_factory=dict, metadata=_EXPLANATION)
    targets: Union[tuple[Union[str, int], ...], None] = field(default=None, metadata=_EXPLANATION)
    split: str = field(default="test", metadata=_EXPLANATION)
    reference_split: Union[str, None] = field(default=None, metadata=_EXPLANATION)
    spacing: Union[tuple[float, ...], None] = field(default=None, metadata=_EXPLANATION)
    roi_size: Union[tuple[int, ...], None] = field(default=None, metadata=_EXPLANATION)
    protocol: Union[str, Protocol] = DEFAULT_PROTOCOL
    merges: Union[tuple[str, ...], Mapping[str, Sequence[str]]] = ()
    random_state: int = DEFAULT_RANDOM_STATE
    contamination: float = DEFAULT_CONTAMINATION
    detector: str = DEFAULT_DETECTOR
    score_detector: str = DEFAULT_SCORE_DETECTOR
    score_tail: str = DEFAULT_SCORE_TAIL
    evidence: Union[str, tuple[str, ...], None] = None
    n_dependencies: int = 12
    n_extremes: int = 3
    seed: int = 0
    n_bootstrap: Union[int, None] = None
    save_maps: bool = field(default=False, metadata=_OUTPUT)
    figures_for: tuple[str, ...] = field(default=(), metadata=_OUTPUT)
    method_name: str = field(init=False, default="", metadata=_OUTPUT)

    def __post_init__(self) -> None:
        """Check every field (the one place each setting is checked); raises :class:`SettingError` naming it."""
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            try:
                self._check(f.name)
            except SettingError:
                raise
            except ValueError as err:
                raise SettingError(f.name, str(err)) from err

    def _check(self, name: str) -> None:
        """Check (and normalise) one field; ``ValueError`` naming it."""
        check = getattr(self, f"_check_{name}", None)
        if check is not None:
            check()

    def _put(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: normalised once, here

    def _check_method(self) -> None:
        from agg2exp_lightning.explain import get_method

        self._put("method_name", get_method(self.method).name)

    def _check_method_options(self) -> None:
        import inspect

        from agg2exp_lightning.explain import explain, get_method

        options = dict(self.method_options or {})
        allowed = set(get_method(self.method_name).options) | {
            p for p, v in inspect.signature(explain).parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"`method_options`: {unknown} not accepted by method {self.method_name!r}{did_you_mean(unknown[0], allowed)}; "
                             f"accepted: {sorted(allowed)}")
        self._put("method_options", options)

    def _check_targets(self) -> None:
        if self.targets is not None:
            targets = (self.targets,) if isinstance(self.targets, (str, int)) else tuple(self.targets)
            if not targets:
                raise ValueError("Expected `targets` to name at least one class (or None for every class), but got an empty list")
            self._put("targets", targets)

    def _check_split(self) -> None:
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"Expected `split` to be a split name, but got {self.split!r}")

    def _check_reference_split(self) -> None:
        if self.reference_split is not None and (not isinstance(self.reference_split, str) or not self.reference_split):
            raise ValueError(f"Expected `reference_split` to be a split name, 'auto' or None, but got {self.reference_split!r}")
        if self.reference_split == "none":
            self._put("reference_split", None)

    def _check_spacing(self) -> None:
        if self.spacing is not None:
            try:
                spacing = tuple(float(s) for s in self.spacing)
            except (TypeError, ValueError):
                spacing = ()
            if len(spacing) != 3 or not all(s > 0 for s in spacing):
                raise ValueError(f"Expected `spacing` to be three positive numbers (mm), but got {self.spacing!r}")
            self._put("spacing", spacing)

    def _check_roi_size(self) -> None:
        if self.roi_size is not None:
            roi = tuple(positive_int("roi_size", r) for r in self.roi_size)
            if len(roi) != 3:
                raise ValueError(f"Expected `roi_size` to be three positive integers, but got {self.roi_size!r}")
            self._put("roi_size", roi)

    def _check_protocol(self) -> None:
        self._put("protocol", resolve_protocol(self.protocol))

    def _check_merges(self) -> None:
        self._put("merges", dict(self.merges) if isinstance(self.merges, Mapping) else tuple(self.merges or ()))

    def _check_random_state(self) -> None:
        _integer("random_state", self.random_state)

    def _check_seed(self) -> None:
        _integer("seed", self.seed)

    def _check_contamination(self) -> None:
        self._put("contamination", check_contamination(self.contamination))

    def _check_detector(self) -> None:
        self._put("detector", get_detector(self.detector).name)

    def _check_score_tail(self) -> None:
        self._put("score_tail", check_score_tail(self.score_tail))

    def _check_score_detector(self) -> None:
        self._put("score_detector", get_detector(self.score_detector, "score_detector").name)

    def _check_evidence(self) -> None:
        from agg2exp_lightning.analysis.evidence import ALL_EVIDENCE, PAPER_EVIDENCE, parse_evidence

        default = PAPER_EVIDENCE if self.protocol.name == "paper" else ALL_EVIDENCE
        self._put("evidence", parse_evidence(self.evidence, default=default))

    def _check_n_dependencies(self) -> None:
        positive_int("n_dependencies", self.n_dependencies)

    def _check_n_extremes(self) -> None:
        positive_int("n_extremes", self.n_extremes)

    def _check_n_bootstrap(self) -> None:
        if self.n_bootstrap is not None and (isinstance(self.n_bootstrap, bool) or not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 0):
            raise ValueError(f"Expected `n_bootstrap` to be a non-negative integer or None, but got {self.n_bootstrap!r}")

    def _check_save_maps(self) -> None:
        self._put("save_maps", bool(self.save_maps))

    def _check_figures_for(self) -> None:
        self._put("figures_for", tuple(str(s) for s in self.figures_for or ()))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names a caller may set (``method_name`` is derived)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def build(cls, settings: AuditSettings | str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> AuditSettings:
        """Settings from ``settings`` (an object, a JSON/YAML file or a mapping; ``None``: the defaults) with
        ``overrides`` on top; an object without overrides is returned as is (already checked).

        Raises:
            ValueError: an unknown field (with the nearest name) or a bad value.
        """
        if isinstance(settings, AuditSettings) and not overrides:
            return settings
        if isinstance(settings, (str, Path)):
            base = cls.read_file(settings)
        elif isinstance(settings, AuditSettings):
            base = {f: getattr(settings, f) for f in cls.field_names()}
        else:
            base = dict(settings or {})
        values = {**base, **overrides}
        cls._check_names(values, "settings")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> AuditSettings:
        """Settings from a JSON or YAML file holding a mapping of field names (missing ones: defaults)."""
        return cls.build(Path(path))

    @classmethod
    def read_file(cls, path: str | Path) -> dict[str, Any]:
        """The mapping of field names in a JSON or YAML settings file (names checked, values not yet)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"settings file {path}: cannot be read ({err.strerror or err})") from err
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as err:  # noqa: BLE001 - any parse error is the file's
            raise ValueError(f"settings file {path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} ({err})") from err
        if not isinstance(data, Mapping):
            raise ValueError(f"settings file {path}: expected a mapping of setting names to values, got {type(data).__name__}")
        cls._check_names(data, f"settings file {path}")
        return dict(data)

    @classmethod
    def _check_names(cls, values: Mapping[str, Any], where: str) -> None:
        names = cls.field_names()
        for key in values:
            if key not in names:
                raise ValueError(f"{where}: unknown setting {key!r}{did_you_mean(key, names)}; settings: {list(names)}")

    def fingerprint_fields(self, group: str | None = None) -> dict[str, Any]:
        """The fingerprinted fields (all, or those of one group: ``"explanation"`` or ``"analysis"``) as
        JSON-ready values (the protocol as its ``as_dict()``), for ``audit.json``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            kind = f.metadata.get("group", "analysis")
            if kind == "output" or (group is not None and kind != group):
                continue
            value = getattr(self, f.name)
            if isinstance(value, Protocol):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {str(k): (list(v) if isinstance(v, (tuple, list)) else v) for k, v in value.items()}
            out[f.name] = value
        return out


def checked_settings(settings: AuditSettings | str | Path | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> AuditSettings:
    """:meth:`AuditSettings.build` for the audit's run functions: a bad setting becomes the audit's one-line
    :class:`~agg2exp_lightning.errors.DataError` (exit 2 on the command line)."""
    from agg2exp_lightning.errors import DataError

    try:
        return AuditSettings.build(settings, **fields)
    except ValueError as err:
        raise DataError(str(err)) from err


def _integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Expected `{name}` to be an integer, but got {value!r}")

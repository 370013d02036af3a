"""Loading any model source: :func:`load_model` recognises this toolkit's checkpoints, MONAI bundle
folders, nnU-Net v2 trained-model folders, importable factories and modules, and returns a
:class:`LoadedModel` (the network, its class names, and its :class:`~agg2exp_lightning.model_loading.source.ScanRunner`)."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading.bundle import is_bundle, read_bundle
from agg2exp_lightning.model_loading.checkpoints import read_weights_file
from agg2exp_lightning.model_loading.factory import build_factory_model, is_factory_spec
from agg2exp_lightning.model_loading.label_map import check_label_count, label_names, read_label_map
from agg2exp_lightning.model_loading.source import ScanRunner, ToolkitRunner
from agg2exp_lightning.model_loading.toolkit import checkpoint_spacing, segmentation_module_from_checkpoint

log = logging.getLogger(__name__)

SourceKind = Literal["checkpoint", "bundle", "nnunet", "factory", "module"]

#: Spacing (mm) of the toolkit's preprocessing when neither the caller nor the source gives one (the paper's).
DEFAULT_SPACING = (1.5, 1.5, 1.5)


@dataclass
class LoadedModel:
    """A model ready to explain, with what its source says about it.

    Attributes:
        model: the ``nn.Module`` (eval mode), ``image [B, C_in, *S] -> logits [B, C, *S]``.
        class_names: ``C`` names, channel order.
        kind: ``"checkpoint"`` (this toolkit's), ``"bundle"`` (MONAI), ``"nnunet"`` (nnU-Net v2 folder),
            ``"factory"`` or ``"module"`` (given in Python).
        source: the source as given (path or ``package.module:function``).
        spacing: preprocessing spacing in mm, if the source records it.
        roi_size: sliding-window size, if the source records it (``None``: whole volumes).
        sw_batch_size, overlap, sw_mode: sliding-window settings (defaults where unknown).
        in_channels: input channels, if known.
        identity: what identifies the weights (file hashes, factory name) for resume fingerprints.
        runner: the source's own :class:`~agg2exp_lightning.model_loading.source.ScanRunner` (bundles, nnU-Net);
            ``None``: the toolkit's preprocessing (see :meth:`scan_runner`).
    """

    model: Any
    class_names: tuple[str, ...]
    kind: SourceKind
    source: str
    spacing: tuple[float, ...] | None = None
    roi_size: tuple[int, ...] | None = None
    sw_batch_size: int = 1
    overlap: float = 0.25
    sw_mode: str = "constant"
    in_channels: int | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    runner: ScanRunner | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def own_runner(self) -> bool:
        """Whether the source brings its own preprocessing and inference (a bundle, an nnU-Net folder)."""
        return self.runner is not None

    def scan_runner(self, *, spacing: Sequence[float] | None = None, roi_size: Sequence[int] | None = None,
                    crop_to_body: bool = True) -> ScanRunner:
        """How scans reach this model: the source's own runner, else the toolkit's preprocessing.

        Args:
            spacing: the toolkit's resampling spacing (default: the source's, else :data:`DEFAULT_SPACING`).
            roi_size: sliding-window size (default: the source's; none: whole volumes).
            crop_to_body: the toolkit's crop to the body (the protocol's choice).

        Raises:
            DataError: ``spacing`` or ``roi_size`` given for a source with its own preprocessing and
                inferer (they are changed through that source's settings, e.g. ``--bundle-override``).
        """
        if self.runner is not None:
            given = [name for name, v in (("--spacing", spacing), ("--roi-size", roi_size)) if v is not None]
            if given:
                how = ("--bundle-override (e.g. inferer#roi_size=[96,96,96])" if self.kind == "bundle"
                       else "its plans")
                raise DataError(f"{' and '.join(given)}: {self.kind} {self.source} runs its own preprocessing and inference; "
                                f"change them through {how}")
            return self.runner
        window = dict(self.window)
        if roi_size is not None:
            window = {"sw_batch_size": self.sw_batch_size, "overlap": self.overlap, "mode": self.sw_mode,
                      "roi_size": tuple(int(r) for r in roi_size)}
        used = tuple(float(s) for s in spacing) if spacing is not None else (self.spacing or DEFAULT_SPACING)
        return ToolkitRunner(used, window, crop_to_body=crop_to_body)

    @property
    def window(self) -> dict[str, Any]:
        """Sliding-window keywords of :func:`agg2exp_lightning.explain.explain` (empty without a ``roi_size``)."""
        if self.runner is not None:
            return dict(self.runner.window)
        if self.roi_size is None:
            return {}
        return {"roi_size": tuple(self.roi_size), "sw_batch_size": self.sw_batch_size, "overlap": self.overlap,
                "mode": self.sw_mode}


def describe_source(source: Any) -> SourceKind:
    """Which kind of model source ``source`` is: an ``nn.Module``, a bundle folder, a factory spec, else a checkpoint."""
    import torch

    if isinstance(source, torch.nn.Module):
        return "module"
    if is_bundle(source):
        return "bundle"
    from agg2exp_lightning.model_loading.nnunet import is_nnunet_folder

    if is_nnunet_folder(source):
        return "nnunet"
    if is_factory_spec(source):
        return "factory"
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        raise DataError(f"model {source} is a folder but neither a MONAI bundle (expected {Path(source) / 'configs'}/inference.json) "
                        "nor an nnU-Net v2 trained-model folder (expected dataset.json, plans.json and fold_K/); "
                        "give a checkpoint file, one of those folders or package.module:function")
    return "checkpoint"


def _first_layer_channels(model: Any) -> tuple[int | None, int]:
    """``(in_channels, spatial dims)`` of the first convolution, if any (``(None, 3)`` otherwise)."""
    import torch

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            return m.in_channels, {torch.nn.Conv1d: 1, torch.nn.Conv2d: 2, torch.nn.Conv3d: 3}[type(m)]
    return None, 3


def output_channels(model: Any, *, in_channels: int | None = None, roi_size: Sequence[int] | None = None) -> int | None:
    """The number of output channels: the model's ``out_channels`` attribute, else one forward pass of zeros.

    The probe input is ``[1, in_channels, *roi_size]`` (default: the first convolution's input channels
    and 32 voxels per side). Returns ``None`` when neither works (the caller then cannot check a label map).
    """
    import torch

    attr = getattr(model, "out_channels", None)
    if isinstance(attr, int) and not isinstance(attr, bool):
        return attr
    first_in, dims = _first_layer_channels(model)
    shape = (1, in_channels or first_in or 1, *(tuple(roi_size) if roi_size is not None else (32,) * dims))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros(shape, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            out = model(x)
        return int(out.shape[1]) if hasattr(out, "shape") and out.dim() >= 2 else None
    except Exception as err:  # noqa: BLE001 - a model that needs another input: skip the check
        log.warning("could not count the model's output channels with a probe input of shape %s (%s: %s)",
                    shape, type(err).__name__, str(err)[:120])
        return None
    finally:
        model.train(was_training)


def load_model(
    source: Any,
    *,
    weights: str | Path | None = None,
    label_map: str | Path | Sequence[str] | Mapping[Any, Any] | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
    bundle_overrides: Sequence[str] | Mapping[str, Any] | None = None,
    folds: Sequence[int | str] | str | None = None,
    checkpoint_name: str | None = None,
) -> LoadedModel:
    """Load a model from any supported source, with its class names.

    Args:
        source: a ``.ckpt`` of this toolkit's training, a MONAI bundle folder, an nnU-Net v2 trained-model
            folder, ``package.module:function`` (a factory returning an ``nn.Module``), or an ``nn.Module``
            (then ``label_map`` names its classes).
        weights: the factory's state-dict file (``weights_only=True``); only with a factory.
        label_map: class names: a JSON/YAML file, a list in channel order or a mapping (see
            :data:`LABEL_MAP_FORMATS`). Default: the checkpoint's names, the bundle's
            ``metadata.json`` ``channel_def``, else ``class_0 .. class_{C-1}``.
        factory_kwargs: keyword arguments of the factory.
        map_location: where weights are loaded to.
        bundle_overrides: a bundle's config overrides, ``KEY=VALUE`` in monai's syntax (see
            :func:`~agg2exp_lightning.model_loading.bundle.parse_overrides`); only with a bundle.
        folds: an nnU-Net folder's folds (ids or ``"all"``; default: every ``fold_K`` present); only with nnU-Net.
        checkpoint_name: an nnU-Net fold's checkpoint file (default ``checkpoint_final.pth``); only with nnU-Net.

    Returns:
        The :class:`LoadedModel` (model in eval mode).

    Raises:
        DataError: a missing or unreadable file, a factory that cannot be imported or returns no
            module, weights that do not fit the model (keys and shapes named), or a label map whose
            class count differs from the model's output channels.
    """
    kind = describe_source(source)
    if weights is not None and kind != "factory":
        raise DataError(f"--weights belongs to a model factory (package.module:function); {source} is a {kind} with its own weights")
    if bundle_overrides and kind != "bundle":
        raise DataError(f"--bundle-override belongs to a MONAI bundle folder; {source} is a {kind}")
    if (folds is not None or checkpoint_name is not None) and kind != "nnunet":
        raise DataError(f"--folds/--checkpoint-name belong to an nnU-Net v2 trained-model folder; {source} is a {kind}")
    info: dict[str, Any] = {}
    if kind == "module":
        model, names, channels, where = source, None, None, type(source).__name__
        identity = {"module": f"{type(source).__module__}.{type(source).__qualname__}"}
    elif kind == "checkpoint":
        from agg2exp_lightning.utils import file_sha256

        ckpt = read_weights_file(source, what="checkpoint", map_location=map_location)
        model = segmentation_module_from_checkpoint(ckpt, where=str(source))
        hp = model.hparams
        names, channels, where = tuple(model.class_names), int(hp["num_classes"]), f"checkpoint {source}"
        info = {"spacing": checkpoint_spacing(ckpt), "roi_size": tuple(int(r) for r in hp["roi_size"]),
                "sw_batch_size": int(hp.get("sw_batch_size", 1)), "overlap": float(hp.get("sw_overlap", 0.25)),
                "sw_mode": str(hp.get("sw_mode", "constant")), "in_channels": int(hp["in_channels"])}
        identity = {"checkpoint_sha256": file_sha256(source)}
    elif kind == "bundle":
        from agg2exp_lightning.utils import file_sha256

        b = read_bundle(source, overrides=bundle_overrides, map_location=map_location)
        model, names, channels, where = b.pop("model"), b.pop("class_names"), b.pop("out_channels"), f"MONAI bundle {source}"
        identity = {"bundle_weights_sha256": file_sha256(b.pop("weights")), "bundle_overrides": dict(b["runner"].overrides)}
        info = {k: v for k, v in b.items() if v is not None}
        info.update({k: v for k, v in b["runner"].window.items() if k in ("roi_size", "sw_batch_size", "overlap")})
        if "mode" in b["runner"].window:
            info["sw_mode"] = b["runner"].window["mode"]
    elif kind == "nnunet":
        from agg2exp_lightning.model_loading.nnunet import read_nnunet_folder

        n = read_nnunet_folder(source, folds=folds, checkpoint_name=checkpoint_name, map_location=map_location)
        model, names, channels, where = n.pop("model"), n.pop("class_names"), n.pop("out_channels"), f"nnU-Net folder {source}"
        identity = n.pop("identity")
        info = {k: v for k, v in n.items() if v is not None}
    else:
        from agg2exp_lightning.utils import file_sha256

        model = build_factory_model(source, weights, kwargs=factory_kwargs, map_location=map_location)
        names, channels, where = None, None, f"the model of factory {source}"
        identity = {"factory": source, "factory_kwargs": dict(factory_kwargs or {}),
                    "weights_sha256": file_sha256(weights) if weights is not None else None}
    if label_map is not None:
        map_where = str(label_map) if isinstance(label_map, (str, Path)) else "label_map"
        given = read_label_map(label_map) if isinstance(label_map, (str, Path)) else label_names(label_map, where=map_where)
        if channels is None:
            channels = output_channels(model, in_channels=info.get("in_channels"), roi_size=info.get("roi_size"))
        check_label_count(given, channels, where=map_where, model=where)
        if names is not None and tuple(given) != tuple(names):
            log.info("class names from %s replace those of %s", map_where, where)
        names = tuple(given)
        identity["class_names"] = list(names)
    if names is None:
        channels = channels if channels is not None else output_channels(model, in_channels=info.get("in_channels"), roi_size=info.get("roi_size"))
        if channels is None:
            raise DataError(f"{where}: cannot tell how many classes it predicts; give a label map (--label-map) naming its output channels")
        names = tuple(f"class_{i}" for i in range(channels))
        log.warning("%s names no classes: using %s .. %s (give --label-map to name them)", where, names[0], names[-1])
    elif label_map is None and channels is not None and len(names) != channels:
        raise DataError(f"{where}: its class names ({len(names)}) do not match its {channels} output channels")
    model.eval()
    return LoadedModel(model=model, class_names=tuple(names), kind=kind, source=str(source) if kind != "module" else where,
                       identity=identity, **info)

"""MONAI bundle folders, run as ``python -m monai.bundle run`` runs them.

The bundle's ``configs/inference.json|yaml`` is parsed with :class:`monai.bundle.ConfigParser` (every
``$`` expression and ``@`` reference resolved, ``bundle_root`` set to the folder, overrides in monai's
own ``key#sub=value`` syntax applied first) and its own entries are used:

- ``network_def``: the network; its weights from the file its ``checkpointloader`` loads
  (``checkpointloader#load_path``, else ``models/model.pt``), read with ``weights_only=True``;
- ``preprocessing``: the scan file (under ``image_key``) -> the network's input;
- ``inferer``: sliding windows (roi size, overlap, blending mode) or one pass;
- ``postprocessing``: what the label map is (activation, inversion of the preprocessing, argmax),
  run without its writers; the maps go back to the scan's grid through MONAI's ``Invertd`` of the
  bundle's own ``preprocessing``.

Nothing is downloaded, and the bundle's data paths, handlers and evaluator are never built.
Differences from the bundle's own runner: the network runs in fp32 (an evaluator's ``amp`` applies on
CUDA only), and data loading is the audit's.
"""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading.source import ScanMaps, ScanRunner, missing_package_error

log = logging.getLogger(__name__)

#: Config files tried in order, relative to the bundle folder.
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
METADATA = "configs/metadata.json"
#: Where the weights are when the config has no ``checkpointloader``.
WEIGHTS = "models/model.pt"
#: Syntax of one override, for messages.
OVERRIDE_SYNTAX = "KEY=VALUE (monai's id syntax, e.g. inferer#roi_size=[64,64,64]; VALUE parsed as JSON/YAML when it can be)"


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a ``configs/`` folder (a MONAI bundle)."""
    p = Path(path)
    return p.is_dir() and (p / "configs").is_dir()


def parse_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["inferer#roi_size=[64,64,64]", "displayable_configs#highres=false"]`` -> ``{id: value}``.

    Values are parsed as JSON, else YAML, else kept as text (``$`` expressions and ``@`` references stay
    text, as monai's runner keeps them).

    Raises:
        DataError: an item without ``=`` or with an empty key.

    Example:
        >>> parse_overrides(["inferer#roi_size=[32, 32, 32]", "load_pretrain=false", "output_ext=.nii.gz"])
        {'inferer#roi_size': [32, 32, 32], 'load_pretrain': False, 'output_ext': '.nii.gz'}
    """
    import yaml

    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise DataError(f"--bundle-override {item!r}: expected {OVERRIDE_SYNTAX}")
        value: Any = text
        if not text.startswith(("$", "@", "%")):
            try:
                value = json.loads(text)
            except ValueError:
                try:
                    value = yaml.safe_load(text)
                except yaml.YAMLError:
                    value = text
                if not isinstance(value, (list, dict, bool, int, float)) and value is not None:
                    value = text
        out[key.strip()] = value
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


def _key_path(raw: Any, key: str, prefix: str) -> tuple[str, dict[str, Any]] | None:
    """The id (``a#b#0``) and the dict of the first component (``_target_``) under ``raw`` that has ``key``."""
    if isinstance(raw, Mapping):
        if "_target_" in raw and key in raw:
            return prefix, dict(raw)
        children = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        children = [(str(i), v) for i, v in enumerate(raw)]
    else:
        return None
    for k, v in children:
        found = _key_path(v, key, f"{prefix}#{k}")
        if found is not None:
            return found
    return None


def _fix_for(err: BaseException, raw: Any, entry: str) -> str:
    """The override that would fix a config error, as far as it can be told from the error."""
    import re

    text = str(err)
    match = re.search(r"unexpected keyword argument '(\w+)'", text)
    if match:
        found = _key_path(raw, match.group(1), entry)
        if found is not None:
            where, component = found
            component.pop(match.group(1))
            return (f"the installed MONAI no longer accepts {match.group(1)!r}: give the entry without it, "
                    f"--bundle-override '{where}={json.dumps(component, separators=(',', ':'))}'")
    return f"override the entry with arguments the installed MONAI accepts, --bundle-override '{entry}=...'"


def _build(parser: Any, entry: str, root: Path, config_name: str) -> Any:
    """``parser.get_parsed_content(entry)``, or one line naming the entry, the error and the override that fixes it."""
    import monai
    from monai.bundle.config_parser import ConfigParser

    from agg2exp_lightning.errors import root_cause

    try:
        return parser.get_parsed_content(entry)
    except Exception as err:  # noqa: BLE001 - any failure of the config: name the entry
        missing = missing_package_error(err, f"MONAI bundle {root}: {entry!r} in {config_name}")
        if missing is not None:
            raise missing from err
        cause = root_cause(err)
        raw = parser.get(entry) if isinstance(parser, ConfigParser) else None
        raise DataError(f"MONAI bundle {root}: {entry!r} in {config_name} does not build with the installed MONAI "
                        f"{monai.__version__}: {type(cause).__name__}: {_first_line(cause)}; fix: {_fix_for(cause, copy.deepcopy(raw), entry)}"
                        ) from err


def _metadata(root: Path) -> dict[str, Any]:
    """``{"class_names", "out_channels", "in_channels"}`` from ``configs/metadata.json`` (``None`` where absent)."""
    from agg2exp_lightning.model_loading.label_map import label_names

    out: dict[str, Any] = {"class_names": None, "out_channels": None, "in_channels": None}
    meta_file = root / METADATA
    if not meta_file.is_file():
        return out
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DataError(f"MONAI bundle {root}: {METADATA} is not valid JSON: {str(err)[:200]}") from err
    fmt = dict(meta.get("network_data_format") or {}) if isinstance(meta, Mapping) else {}
    outputs = next(iter(dict(fmt.get("outputs") or {}).values()), None)
    inputs = next(iter(dict(fmt.get("inputs") or {}).values()), None)
    if isinstance(outputs, Mapping):
        out["out_channels"] = outputs.get("num_channels") if isinstance(outputs.get("num_channels"), int) else None
        if outputs.get("channel_def"):
            out["class_names"] = label_names(outputs["channel_def"], where=f"{meta_file} (outputs channel_def)")
    if isinstance(inputs, Mapping) and isinstance(inputs.get("num_channels"), int):
        out["in_channels"] = inputs["num_channels"]
    return out


def _window(inferer: Any, root: Path) -> dict[str, Any]:
    """Sliding-window keywords of :func:`~agg2exp_lightning.explain.explain` from the bundle's inferer."""
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    if inferer is None or isinstance(inferer, SimpleInferer):
        return {}
    if not isinstance(inferer, SlidingWindowInferer):
        raise DataError(f"MONAI bundle {root}: its inferer is a {type(inferer).__name__}; expected a SlidingWindowInferer or "
                        "SimpleInferer (the windows the explanation repeats)")
    padding = getattr(inferer.padding_mode, "value", inferer.padding_mode)
    if str(padding) != "constant" or float(inferer.cval) != 0.0:
        raise DataError(f"MONAI bundle {root}: its inferer pads with {padding} (cval {inferer.cval}); the explanation's windows "
                        "pad with zeros: override it, --bundle-override inferer#padding_mode=constant")
    roi = tuple(int(r) for r in np.atleast_1d(inferer.roi_size))
    if any(r <= 0 for r in roi):
        raise DataError(f"MONAI bundle {root}: its inferer's roi_size {list(roi)} has non-positive sizes (whole axes); give "
                        "explicit sizes, e.g. --bundle-override inferer#roi_size=[96,96,96]")
    return {"roi_size": roi, "sw_batch_size": int(inferer.sw_batch_size), "overlap": inferer.overlap,
            "mode": str(getattr(inferer.mode, "value", inferer.mode)), "sigma_scale": inferer.sigma_scale}


#: MONAI readers that need an optional package: reader -> (package, MONAI's flag in ``monai.data.image_reader``).
READER_PACKAGES = {"ITKReader": ("itk", "has_itk"), "PydicomReader": ("pydicom", "has_pydicom"), "NrrdReader": ("nrrd", "has_nrrd")}


def check_readers(preprocessing: Any, root: Path) -> None:
    """Refuse a bundle whose ``LoadImage(d)`` names a reader whose package is not installed (MONAI would
    silently read the scan with another reader).

    Raises:
        DataError: naming the reader, the package and the extra that brings it.
    """
    import monai.data.image_reader as readers
    from monai.transforms import LoadImage

    for t in getattr(preprocessing, "transforms", []):
        loader = getattr(t, "_loader", t)
        if not isinstance(loader, LoadImage) or loader.auto_select or not loader.readers:
            continue
        name = type(loader.readers[-1]).__name__  # the user-specified reader is registered last
        if name in READER_PACKAGES and not getattr(readers, READER_PACKAGES[name][1], True):
            package = READER_PACKAGES[name][0]
            raise DataError(f"MONAI bundle {root}: its preprocessing reads scans with {name}, which needs the package {package!r} "
                            f"(not installed): pip install {package}" + (" (or pip install 'agg2exp-lightning[itk]')" if package == "itk" else ""))


class BundleRunner(ScanRunner):
    """A bundle's own preprocessing, inferer and postprocessing (see the module docstring).

    Args:
        root: the bundle folder.
        config_name: the inference config's file name (for messages).
        preprocessing: the parsed ``preprocessing`` (a MONAI ``Compose`` of dict transforms).
        postprocessing: the parsed ``postprocessing`` without its writers, or ``None``.
        inferer: the parsed ``inferer`` (``None``: one pass).
        image_key: the key of the scan in the bundle's data dicts.
        overrides: the overrides applied to the config (recorded).
    """

    name = "monai.bundle"

    def __init__(self, root: Path, config_name: str, preprocessing: Any, postprocessing: Any, inferer: Any, image_key: str,
                 overrides: Mapping[str, Any]) -> None:
        self.root, self.config_name = Path(root), config_name
        self.preprocessing, self.postprocessing, self.inferer = preprocessing, postprocessing, inferer
        self.image_key = image_key
        self.overrides = dict(overrides)
        self.window = _window(inferer, self.root)
        check_readers(preprocessing, self.root)

    def preprocess(self, path: str | Path) -> Any:
        from agg2exp_lightning.errors import find_data_error, root_cause

        try:
            out = self.preprocessing({self.image_key: str(path)})
        except Exception as err:  # noqa: BLE001 - name the scan and the cause
            missing = missing_package_error(err, f"MONAI bundle {self.root}: its preprocessing of {path}")
            if missing is not None:
                raise missing from err
            cause = find_data_error(err) or root_cause(err)
            raise DataError(f"MONAI bundle {self.root}: its preprocessing fails on {path}: {type(cause).__name__}: {_first_line(cause)}") from err
        if not isinstance(out, Mapping) or self.image_key not in out:
            raise DataError(f"MONAI bundle {self.root}: its preprocessing returned no {self.image_key!r} for {path} "
                            "(a list of patches or another key); expected one preprocessed volume")
        return out[self.image_key]

    def infer(self, model: Any, image: Any) -> Any:
        import torch

        from agg2exp_lightning.model_loading.source import _plain

        x = _plain(image).float()
        with torch.no_grad():
            return model(x) if self.inferer is None else self.inferer(x, model)

    def _as_pred(self, data: Any, image: Any) -> Any:
        from monai.data import MetaTensor

        from agg2exp_lightning.model_loading.source import _plain

        meta = {k: copy.deepcopy(v) for k, v in dict(image.meta).items() if k != "affine"}
        return MetaTensor(_plain(data), affine=image.affine.clone(), meta=meta)

    def _invert(self, data: Any, image: Any, *, nearest: bool) -> Any:
        from monai.transforms import Invertd

        inv = Invertd(keys="pred", transform=self.preprocessing, orig_keys=self.image_key, nearest_interp=nearest, to_tensor=True)
        return inv({"pred": self._as_pred(data, image), self.image_key: image})["pred"]

    def to_scan_grid(self, model: Any, image: Any, attribution: Any, prediction: Any) -> ScanMaps:
        import torch
        from monai.transforms import Invertd

        from agg2exp_lightning.model_loading.source import _plain

        logits = self.infer(model, _plain(image)[None])[0]
        data = {"pred": self._as_pred(logits, image), self.image_key: image}
        steps = list(getattr(self.postprocessing, "transforms", [])) if self.postprocessing is not None else []
        out = self.postprocessing(data) if self.postprocessing is not None else data
        pred = out["pred"]
        if not any(isinstance(t, Invertd) for t in steps):  # on the model's grid: back through the preprocessing
            pred = self._invert(pred, image, nearest=True)
        labels = _plain(pred)
        if labels.dim() == 4 and labels.shape[0] == 1:
            labels = labels[0]
        if labels.dim() != 3 or not bool((labels == labels.round()).all()):
            raise DataError(f"MONAI bundle {self.root}: its postprocessing gives {tuple(labels.shape)} values that are not one label "
                            "map (no argmax: multi-label or probability outputs); expected softmax/argmax segmentation")
        maps = None if attribution is None else _plain(self._invert(_plain(attribution).float(), image, nearest=False)).float().numpy()
        affine = np.asarray(_plain(pred.affine), dtype=float) if hasattr(pred, "affine") else np.asarray(_plain(image.meta["original_affine"]))
        return ScanMaps(maps, labels.round().clamp(0, 255).to(torch.uint8).numpy(), affine)

    def settings(self) -> dict[str, Any]:
        from agg2exp_lightning.utils import file_sha256

        config = self.root / self.config_name
        return {"runner": self.name, "bundle": str(self.root.resolve()), "config": self.config_name,
                "config_sha256": file_sha256(config) if config.is_file() else None, "image_key": self.image_key,
                "overrides": {k: v for k, v in self.overrides.items()},
                "inferer": type(self.inferer).__name__ if self.inferer is not None else None,
                "window": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.window.items()}}


def _without_writers(postprocessing: Any) -> Any:
    """The postprocessing ``Compose`` without its writers (``SaveImage*``): the audit writes its own maps."""
    from monai.transforms import Compose

    if postprocessing is None or not hasattr(postprocessing, "transforms"):
        return postprocessing
    kept = [t for t in postprocessing.transforms if not type(t).__name__.startswith("SaveImage")]
    return Compose(kept)


def read_bundle(folder: str | Path, *, overrides: Sequence[str] | Mapping[str, Any] | None = None,
                map_location: Any = "cpu") -> dict[str, Any]:
    """The network, class names and :class:`BundleRunner` of a MONAI bundle folder.

    Args:
        folder: the bundle (``configs/inference.json`` or ``.yaml`` with ``network_def``, the weights where
            its ``checkpointloader`` loads them, optionally ``configs/metadata.json``).
        overrides: ``KEY=VALUE`` items (see :func:`parse_overrides`) or a mapping, applied before parsing.
        map_location: where the weights are loaded to.

    Returns:
        ``{"model", "class_names" (or None), "out_channels" (or None), "in_channels" (or None),
        "spacing" (or None), "runner", "weights"}``.

    Raises:
        DataError: a file is missing or unreadable (the weights' path as the loader expects it), an
            entry that does not build with the installed MONAI (named, with the override that fixes
            it), a transform that needs a package that is not installed (named, with its extra), or
            weights that do not fit the network (keys and shapes).
    """
    import torch
    from monai.bundle import ConfigParser

    from agg2exp_lightning.model_loading.checkpoints import load_state_dict_checked, read_weights_file, unwrap_state_dict

    root = Path(folder)
    config_file = next((root / c for c in INFERENCE_CONFIGS if (root / c).is_file()), None)
    if config_file is None:
        raise DataError(f"MONAI bundle {root}: expected one of {list(INFERENCE_CONFIGS)}, found none")
    parser = ConfigParser()
    try:
        parser.read_config(str(config_file))
        if (root / METADATA).is_file():
            parser.read_meta(str(root / METADATA))
    except Exception as err:  # noqa: BLE001 - any parse error: name the file
        raise DataError(f"MONAI bundle {root}: {config_file.name} cannot be read: {type(err).__name__}: {str(err)[:200]}") from err
    parser["bundle_root"] = str(root)
    pairs = parse_overrides(overrides)
    for key, value in pairs.items():
        parser[key] = value
    raw = parser.get()
    for entry in ("network_def", "preprocessing"):
        if entry not in raw:
            raise DataError(f"MONAI bundle {root}: {config_file.name} has no {entry!r} entry; expected an inference config")
    model = _build(parser, "network_def", root, config_file.name)
    if not isinstance(model, torch.nn.Module):
        raise DataError(f"MONAI bundle {root}: 'network_def' built a {type(model).__name__}, expected a torch.nn.Module")
    if "checkpointloader" in raw:
        load_path = _build(parser, "checkpointloader#load_path", root, config_file.name)
        weights = Path(str(load_path))
        if not weights.is_absolute() and not weights.exists():
            weights = root / weights
    else:
        weights = root / WEIGHTS
    state = unwrap_state_dict(read_weights_file(weights, what="bundle weights (the path its checkpointloader loads)", map_location=map_location),
                              what=f"bundle weights {weights}")
    load_state_dict_checked(model, state, what=f"bundle weights {weights}", expected=f"the network_def of {config_file}")
    image_key = str(parser.get_parsed_content("image_key")) if "image_key" in raw else "image"
    preprocessing = _build(parser, "preprocessing", root, config_file.name)
    inferer = _build(parser, "inferer", root, config_file.name) if "inferer" in raw else None
    postprocessing = _without_writers(_build(parser, "postprocessing", root, config_file.name)) if "postprocessing" in raw else None
    runner = BundleRunner(root, config_file.name, preprocessing, postprocessing, inferer, image_key, pairs)
    spacing = None
    for t in getattr(preprocessing, "transforms", []):
        pixdim = getattr(getattr(t, "spacing_transform", None), "pixdim", None)
        if pixdim is not None:
            spacing = tuple(float(v) for v in np.atleast_1d(pixdim))
    return {"model": model, "weights": weights, "runner": runner, "spacing": spacing, **_metadata(root)}

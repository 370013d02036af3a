"""MONAI bundle folders: the network from ``configs/inference.json|yaml`` (``network_def``), the weights
from ``models/model.pt`` and the class names from ``configs/metadata.json``.

Nothing is downloaded; the network is built with :class:`monai.bundle.ConfigParser` from the
``network_def`` entry alone (with the entries it refers to), so the bundle's data paths and handlers
need not exist here.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)

#: Config files tried in order, relative to the bundle folder.
INFERENCE_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
METADATA = "configs/metadata.json"
WEIGHTS = "models/model.pt"


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a ``configs/`` folder (a MONAI bundle)."""
    p = Path(path)
    return p.is_dir() and (p / "configs").is_dir()


def _resolve(parser: Any, value: Any) -> Any:
    """A config value with ``@id`` references resolved; ``$`` expressions are left out (``None``)."""
    if isinstance(value, str) and value.startswith("@"):
        try:
            return parser.get_parsed_content(value[1:])
        except Exception:  # noqa: BLE001 - an optional setting: not known
            return None
    if isinstance(value, str) and value.startswith("$"):
        return None
    return value


def _find_target(config: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    """The first dict (depth-first) whose ``_target_`` ends with one of ``names``."""
    if isinstance(config, Mapping):
        target = config.get("_target_")
        if isinstance(target, str) and target.rsplit(".", 1)[-1] in names:
            return dict(config)
        children = config.values()
    elif isinstance(config, list):
        children = config
    else:
        return None
    for child in children:
        found = _find_target(child, names)
        if found is not None:
            return found
    return None


def _numbers(value: Any, cast: type) -> tuple | None:
    try:
        return tuple(cast(v) for v in value) if isinstance(value, (list, tuple)) else None
    except (TypeError, ValueError):
        return None


def read_bundle(folder: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The network, class names and preprocessing/inferer settings of a MONAI bundle folder.

    Args:
        folder: the bundle (``configs/inference.json`` or ``.yaml`` with ``network_def``,
            ``models/model.pt``, optionally ``configs/metadata.json``).
        map_location: where the weights are loaded to.

    Returns:
        ``{"model", "class_names" (or None), "out_channels" (or None), "in_channels" (or None),
        "spacing", "roi_size", "sw_batch_size", "overlap", "sw_mode", "weights"}``; unknown settings are
        ``None``.

    Raises:
        DataError: a file is missing or unreadable, the config has no ``network_def`` or it does not
            build a module, or the weights do not fit it (naming keys and shapes).
    """
    import torch
    from monai.bundle import ConfigParser

    from agg2exp_lightning.model_loading.checkpoints import load_state_dict_checked, read_weights_file, unwrap_state_dict
    from agg2exp_lightning.model_loading.label_map import label_names

    root = Path(folder)
    config_file = next((root / c for c in INFERENCE_CONFIGS if (root / c).is_file()), None)
    if config_file is None:
        raise DataError(f"MONAI bundle {root}: expected one of {list(INFERENCE_CONFIGS)}, found none")
    parser = ConfigParser()
    try:
        parser.read_config(str(config_file))
    except Exception as err:  # noqa: BLE001 - any parse error: name the file
        raise DataError(f"MONAI bundle {root}: {config_file.name} cannot be read: {type(err).__name__}: {str(err)[:200]}") from err
    parser["bundle_root"] = str(root)
    if "network_def" not in parser.get():
        raise DataError(f"MONAI bundle {root}: {config_file.name} has no 'network_def' entry (the network to build)")
    try:
        model = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # noqa: BLE001 - a bad target or argument: name it
        raise DataError(f"MONAI bundle {root}: 'network_def' in {config_file.name} does not build a network: "
                        f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}") from err
    if not isinstance(model, torch.nn.Module):
        raise DataError(f"MONAI bundle {root}: 'network_def' built a {type(model).__name__}, expected a torch.nn.Module")
    weights = root / WEIGHTS
    state = unwrap_state_dict(read_weights_file(weights, what="bundle weights", map_location=map_location), what=f"bundle weights {weights}")
    load_state_dict_checked(model, state, what=f"bundle weights {weights}", expected=f"the network_def of {config_file}")

    class_names = out_channels = in_channels = None
    meta_file = root / METADATA
    if meta_file.is_file():
        import json

        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise DataError(f"MONAI bundle {root}: {METADATA} is not valid JSON: {str(err)[:200]}") from err
        fmt = dict(meta.get("network_data_format") or {}) if isinstance(meta, Mapping) else {}
        outputs = next(iter(dict(fmt.get("outputs") or {}).values()), None)
        inputs = next(iter(dict(fmt.get("inputs") or {}).values()), None)
        if isinstance(outputs, Mapping):
            out_channels = outputs.get("num_channels") if isinstance(outputs.get("num_channels"), int) else None
            if outputs.get("channel_def"):
                class_names = label_names(outputs["channel_def"], where=f"{meta_file} (outputs channel_def)")
        if isinstance(inputs, Mapping) and isinstance(inputs.get("num_channels"), int):
            in_channels = inputs["num_channels"]
    raw = parser.get()
    spacing = roi = None
    spacing_def = _find_target(raw.get("preprocessing"), ("Spacingd", "Spacing"))
    if spacing_def is not None:
        spacing = _numbers(_resolve(parser, spacing_def.get("pixdim")), float)
    inferer = raw.get("inferer") if isinstance(raw.get("inferer"), Mapping) else None
    settings: dict[str, Any] = {}
    if inferer is not None:
        roi = _numbers(_resolve(parser, inferer.get("roi_size")), int)
        for key, name, cast in (("sw_batch_size", "sw_batch_size", int), ("overlap", "overlap", float), ("mode", "sw_mode", str)):
            value = _resolve(parser, inferer.get(key))
            if value is not None:
                try:
                    settings[name] = cast(value)
                except (TypeError, ValueError):
                    pass
    return {"model": model, "class_names": class_names, "out_channels": out_channels, "in_channels": in_channels,
            "spacing": spacing, "roi_size": roi, "weights": weights, **settings}

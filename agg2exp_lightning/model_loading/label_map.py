"""Label maps: the names of a model's output channels (channel id -> class name), any number of classes."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agg2exp_lightning.errors import DataError

#: Formats :func:`read_label_map` accepts, for messages.
LABEL_MAP_FORMATS = (
    "a list of names in channel order, a mapping name -> channel id, a mapping channel id -> name, "
    "or one of these under 'labels' (nnU-Net dataset.json) or 'channel_def' (MONAI bundle metadata)"
)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def label_names(raw: Any, *, where: str) -> tuple[str, ...]:
    """Class names in channel order from a parsed label map (see :data:`LABEL_MAP_FORMATS`).

    Args:
        raw: the parsed JSON/YAML.
        where: the source, as messages name it.

    Returns:
        ``names[channel id]`` for channels ``0 .. C-1``.

    Raises:
        DataError: not one of the formats, ids not exactly ``0 .. C-1``, or repeated or empty names.

    Example:
        >>> label_names({"background": 0, "liver": 1}, where="map.json")
        ('background', 'liver')
    """
    if isinstance(raw, Mapping):
        for key in ("labels", "channel_def"):
            if key in raw and isinstance(raw[key], (Mapping, list)):
                return label_names(raw[key], where=where)
    by_id: dict[int, Any] = {}
    if isinstance(raw, list):
        by_id = dict(enumerate(raw))
    elif isinstance(raw, Mapping) and raw:
        keys_are_ids = all(_as_int(k) is not None for k in raw)
        values_are_ids = all(_as_int(v) is not None for v in raw.values())
        if keys_are_ids and not values_are_ids:
            by_id = {_as_int(k): v for k, v in raw.items()}
        elif values_are_ids:
            ids = [_as_int(v) for v in raw.values()]
            if len(set(ids)) != len(ids):
                raise DataError(f"label map {where}: channel ids repeat ({sorted(ids)}); expected each id once")
            by_id = {i: k for k, i in zip(raw, ids)}
    if not by_id:
        raise DataError(f"label map {where}: expected {LABEL_MAP_FORMATS}, but got {type(raw).__name__} {str(raw)[:120]!r}")
    ids = sorted(by_id)
    if ids != list(range(len(ids))):
        raise DataError(f"label map {where}: expected channel ids 0 .. {len(ids) - 1} each once, but got {ids}")
    names = [by_id[i] for i in ids]
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise DataError(f"label map {where}: expected a non-empty name for every channel, but got {bad[:5]}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"label map {where}: class names repeat: {repeated}; expected one name per channel")
    if len(names) < 2:
        raise DataError(f"label map {where}: expected at least 2 classes (background and one structure), got {names}")
    return tuple(str(n).strip() for n in names)


def read_label_map(path: str | Path) -> tuple[str, ...]:
    """Class names in channel order from a JSON or YAML file (see :data:`LABEL_MAP_FORMATS`).

    Raises:
        DataError: the file is missing, not valid JSON/YAML, or not a label map (see :func:`label_names`).

    Example:
        ``labels.yaml``::

            0: background
            1: liver
            2: tumour
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DataError(f"label map {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
        raw = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise DataError(f"label map {p} is not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: {str(err)[:200]}") from err
    return label_names(raw, where=str(p))


def check_label_count(names: Sequence[str], channels: int | None, *, where: str, model: str) -> None:
    """Refuse a label map whose class count differs from the model's output channels.

    Raises:
        DataError: naming the label map, its count and the model's.
    """
    if channels is not None and len(names) != channels:
        raise DataError(f"label map {where} names {len(names)} classes, but {model} has {channels} output channels; "
                        f"expected one name per output channel")


"""The 17 thorax labels and the mapping from TotalSegmentator v2 structures onto them."""
from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from agg2exp_lightning.errors import DataError

#: Label names, index = label id, in the order of the published Agg2Exp model.
THORAX_CLASSES: tuple[str, ...] = (
    "background",
    "aorta",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "trachea",
    "heart",
    "pulmonary_vein",
    "thyroid_gland",
    "ribs",
    "vertebrae",
    "autochthon_left",
    "autochthon_right",
    "sternum",
    "costal_cartilages",
)
NUM_CLASSES: int = len(THORAX_CLASSES)

#: The five lung lobes, for merging into one "lungs" region.
LUNG_LOBES: tuple[str, ...] = THORAX_CLASSES[2:7]

DEFAULT_MAPPING_FILE = "totalsegmentator_v2_thorax.yaml"


def load_structure_mapping(path: str | Path | None = None) -> dict[str, list[str]]:
    """Read which TotalSegmentator structures make up each foreground label.

    Args:
        path: a YAML file mapping label names (in label-id order, background omitted) to lists of
            structure names. ``None`` reads the mapping shipped with the package.

    Returns:
        An ordered dict ``label name -> [structure names]`` over the foreground labels.

    Raises:
        DataError: the file is missing, is not a mapping of names to lists of names, or maps one
            structure to two labels.

    Example:
        >>> mapping = load_structure_mapping()
        >>> mapping["ribs"][:2]
        ['rib_left_1', 'rib_left_2']
    """
    import yaml

    if path is None:
        text = resources.files("agg2exp_lightning.label_maps").joinpath(DEFAULT_MAPPING_FILE).read_text()
        where = f"<package>/label_maps/{DEFAULT_MAPPING_FILE}"
    else:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"structure mapping file {p} does not exist")
        text, where = p.read_text(), str(p)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(f"structure mapping {where} is not valid YAML: {err}") from err
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"structure mapping {where} must map label names to lists of structure names")
    mapping: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for label, structures in raw.items():
        if isinstance(structures, str):
            structures = [structures]
        if not isinstance(label, str) or not isinstance(structures, list) or not all(
            isinstance(s, str) for s in structures
        ):
            raise DataError(
                f"structure mapping {where}: entry {label!r} must be a list of structure names, got {structures!r}"
            )
        for s in structures:
            if s in owner:
                raise DataError(f"structure mapping {where}: structure {s!r} is mapped to both {owner[s]!r} and {label!r}")
            owner[s] = label
        mapping[label] = list(structures)
    return mapping


def resolve_targets(
    targets: Sequence[str | int] | None, class_names: Sequence[str] = THORAX_CLASSES, *, argument: str = "targets"
) -> list[int]:
    """Class ids of the classes given by name or id: the one rule for every ``targets`` argument.

    Args:
        targets: class names, ids, or ids written as text (``"3"``); ``None`` means every class.
        class_names: the model's classes in channel order (any number of them).
        argument: how messages name the argument (``"targets"``, ``"--targets"``, ``"overlay_classes"``).

    Returns:
        The ids, in the order given.

    Raises:
        DataError: a name or id that is not one of the classes (the message suggests the nearest name),
            an empty list, or a class given twice.

    Example:
        >>> resolve_targets(["aorta", 0, "8"])
        [1, 0, 8]
    """
    from agg2exp_lightning.utils.options import did_you_mean

    names = list(class_names)
    if targets is None:
        return list(range(len(names)))
    if isinstance(targets, (str, int)):
        raise DataError(f"`{argument}`: expected a list of class names or ids, got {targets!r}")
    ids: list[int] = []
    for t in targets:
        text = str(t).strip()
        is_id = not isinstance(t, bool) and (isinstance(t, (int, np.integer)) or (isinstance(t, str) and text.isdigit()))
        if isinstance(t, str) and text in names:
            ids.append(names.index(text))
        elif is_id and 0 <= int(text) < len(names):
            ids.append(int(text))
        elif is_id:
            raise DataError(f"`{argument}`: class id {int(text)} is outside [0, {len(names)}) for this model")
        else:
            raise DataError(
                f"`{argument}`: the model has no class {t!r}; expected names or ids 0-{len(names) - 1} of its "
                f"{len(names)} classes {names}{did_you_mean(text, names)}"
            )
    if not ids or len(set(ids)) != len(ids):
        raise DataError(f"`{argument}`: expected a non-empty list of classes without repeats, got {list(targets)!r}")
    return ids

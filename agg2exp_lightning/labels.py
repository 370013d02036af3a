"""The 17 thorax labels and the mapping from TotalSegmentator v2 structures onto them."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

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

from __future__ import annotations

import numpy as np
import pytest

from agg2exp_lightning import NUM_CLASSES, THORAX_CLASSES
from agg2exp_lightning.data.totalsegmentator import validate_mapping
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.labels import load_structure_mapping


def test_thorax_classes_order_matches_published_model():
    assert NUM_CLASSES == 17
    assert THORAX_CLASSES[0] == "background"
    assert THORAX_CLASSES[7] == "trachea" and THORAX_CLASSES[11] == "ribs" and THORAX_CLASSES[16] == "costal_cartilages"


def test_shipped_mapping_covers_every_foreground_label():
    mapping = load_structure_mapping()
    assert list(mapping) == list(THORAX_CLASSES[1:])
    assert mapping["ribs"] == [f"rib_left_{i}" for i in range(1, 13)] + [f"rib_right_{i}" for i in range(1, 13)]
    assert mapping["vertebrae"] == [f"vertebrae_T{i}" for i in range(1, 13)]
    validate_mapping(mapping)


def test_mapping_file_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_structure_mapping(tmp_path / "nope.yaml")
    twice = tmp_path / "twice.yaml"
    twice.write_text("aorta: [aorta]\nheart: [aorta]\n")
    with pytest.raises(DataError, match="'aorta' is mapped to both"):
        load_structure_mapping(twice)
    bad = tmp_path / "bad.yaml"
    bad.write_text("aorta: 3\n")
    with pytest.raises(DataError, match="entry 'aorta' must be a list"):
        load_structure_mapping(bad)


def test_unknown_label_in_mapping_suggests_nearest():
    with pytest.raises(DataError, match="did you mean 'trachea'"):
        validate_mapping({"trachae": ["trachea"]})


def test_resolve_targets_one_rule_for_names_and_ids():
    from agg2exp_lightning.labels import resolve_targets

    names = ("background", "liver", "spleen")
    assert resolve_targets(["spleen", 0, "1"], names) == [2, 0, 1]  # names, ids and ids as text, in the given order
    assert resolve_targets(None, names) == [0, 1, 2]
    assert resolve_targets([np.int64(8)]) == [8]  # the thorax classes by default; numpy ids accepted
    with pytest.raises(DataError, match=r"`--targets`: the model has no class 'spleeen'.*did you mean 'spleen'"):
        resolve_targets(["spleeen"], names, argument="--targets")
    for bad in ([3], [-1], ["3"]):
        with pytest.raises(DataError, match=r"class id (3|-1) is outside \[0, 3\)"):
            resolve_targets(bad, names)
    for bad in ([True], [1.0], ["-1"]):
        with pytest.raises(DataError, match="has no class"):
            resolve_targets(bad, names)
    with pytest.raises(DataError, match="without repeats"):
        resolve_targets(["liver", 1], names)
    with pytest.raises(DataError, match="without repeats"):
        resolve_targets([], names)
    with pytest.raises(DataError, match="a list of class names"):
        resolve_targets("liver", names)

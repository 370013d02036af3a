"""Scan records of the audit: file names, JSON round trip, checks on reading back, slices, published columns."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch

from agg2exp_lightning.audit.scan_records import (
    MAX_SLICE_SIDE,
    is_finished,
    load_records,
    read_failure,
    read_record,
    read_slices,
    record_stem,
    records_to_frame,
    records_to_table,
    scan_record,
    slice_bundle,
)
from agg2exp_lightning.errors import DataError

CLASSES = ["heart", "vertebrae"]
REGIONS = ["background", "heart", "vertebrae"]


def _record(scan_id: str = "s0001") -> dict:
    mass = torch.tensor([[0.5, 0.5, 0.0], [float("nan"), 0.25, 0.75]])
    mean = [[0.1, 0.2, 0.0], [0.0, 0.05, 0.3]]
    return scan_record(scan_id, CLASSES, REGIONS, mass, mean, dice=np.array([0.9, np.nan]))


def _write(path, obj) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def test_record_stem_keeps_safe_ids_and_makes_others_safe_and_distinct():
    assert record_stem("s0001") == "s0001"
    assert record_stem("case-7_b.v2") == "case-7_b.v2"
    digest = hashlib.sha256(b"a/b").hexdigest()[:8]
    assert record_stem("a/b") == f"a_b-{digest}"  # differs from the safe id "a_b"
    assert record_stem("a_b") == "a_b"
    for hostile in ("../../x", "/etc/passwd", "..", ".hidden", "<script>", "a b"):
        stem = record_stem(hostile)
        assert "/" not in stem and not stem.startswith(".") and stem, hostile
        assert stem.endswith("-" + hashlib.sha256(hostile.encode()).hexdigest()[:8])
    assert record_stem(".hidden") == f"hidden-{hashlib.sha256(b'.hidden').hexdigest()[:8]}"


def test_scan_record_writes_nan_as_null_and_checks_shapes():
    rec = _record()
    assert rec == {"id": "s0001", "classes": CLASSES, "regions": REGIONS,
                   "mass": [[0.5, 0.5, 0.0], [None, 0.25, 0.75]], "mean": [[0.1, 0.2, 0.0], [0.0, 0.05, 0.3]],
                   "dice": [0.9, None]}
    assert scan_record("s", CLASSES, REGIONS, np.zeros((2, 3)), np.zeros((2, 3)))["dice"] is None
    with pytest.raises(ValueError, match=r"`mass` of shape \(2, 3\) for scan 's', got \(3, 2\)"):
        scan_record("s", CLASSES, REGIONS, np.zeros((3, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`mean` of shape"):
        scan_record("s", CLASSES, REGIONS, np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="`dice` of length 2"):
        scan_record("s", CLASSES, REGIONS, np.zeros((2, 3)), np.zeros((2, 3)), dice=[0.5])


def test_record_round_trips_through_json(tmp_path):
    rec = _record()
    path = tmp_path / "s0001.json"
    _write(path, rec)
    assert read_record(path, "s0001") == rec


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "s0001", "classes": ["heart"', "is not readable JSON"),  # truncated
        (b"\xff\xfe\x00garbage", "is not readable JSON"),  # not UTF-8
        ("[1, 2, 3]", "expected a JSON object"),
        ('{"id": "s0001"}', "expected a JSON object"),
        ("OTHER_ID", "expected the record of scan 's0001', got one of 's0002'"),
        ("EMPTY_CLASSES", "non-empty lists of names"),
        ("SHORT_ROW", "T=2 classes and R=3 regions"),
        ("BOOL_VALUE", "T=2 classes and R=3 regions"),
        ("STRING_VALUE", "T=2 classes and R=3 regions"),
        ("LONG_DICE", "T=2 classes and R=3 regions"),
    ],
)
def test_damaged_or_foreign_records_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "s0001.json"
    rec = _record()
    changes = {
        "OTHER_ID": lambda r: r.update(id="s0002"),
        "EMPTY_CLASSES": lambda r: r.update(classes=[]),
        "SHORT_ROW": lambda r: r["mass"][1].pop(),
        "BOOL_VALUE": lambda r: r["mass"][0].__setitem__(0, True),
        "STRING_VALUE": lambda r: r["mean"][0].__setitem__(0, "0.1"),
        "LONG_DICE": lambda r: r.update(dice=[0.1, 0.2, 0.3]),
    }
    if content in changes:
        changes[content](rec)
        _write(path, rec)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        read_record(path, "s0001")
    assert str(path) in str(err.value)


def test_failures_are_read_with_a_note_when_damaged(tmp_path):
    good, broken, listed = tmp_path / "a.failed.json", tmp_path / "b.failed.json", tmp_path / "c.failed.json"
    _write(good, {"id": "a", "error": "DataError: ct.nii.gz is truncated"})
    broken.write_text('{"id": "b", "err', encoding="utf-8")
    _write(listed, ["not", "an", "object"])
    assert read_failure(good) == "DataError: ct.nii.gz is truncated"
    assert read_failure(broken).startswith("unknown error (") and str(broken) in read_failure(broken)
    assert read_failure(listed) == f"unknown error ({listed} holds no JSON object)"


def test_load_records_keeps_order_and_counts_damaged_records_as_failures(tmp_path):
    _write(tmp_path / "s2.json", _record("s2"))
    _write(tmp_path / "s1.json", _record("s1"))
    _write(tmp_path / "s3.failed.json", {"id": "s3", "error": "no ct.nii.gz"})
    (tmp_path / "s4.json").write_text("{", encoding="utf-8")  # killed mid-write without the atomic rename
    _write(tmp_path / f"{record_stem('../x')}.json", _record("../x"))
    done, failed = load_records(tmp_path, ["s1", "s2", "s3", "s4", "s5", "../x"])
    assert [r["id"] for r in done] == ["s1", "s2", "../x"]  # s5 has no file: neither done nor failed
    assert failed["s3"] == "no ct.nii.gz"
    assert set(failed) == {"s3", "s4"} and "s4.json is not readable JSON" in failed["s4"]


def test_is_finished_needs_a_sound_record_and_sound_slices(tmp_path, caplog):
    assert not is_finished(tmp_path, "s1")
    _write(tmp_path / "s1.json", _record("s1"))
    assert is_finished(tmp_path, "s1")  # slices are optional
    (tmp_path / "s1.slices.npz").write_bytes(b"PK\x03\x04 cut short")
    assert not is_finished(tmp_path, "s1")
    assert "is explained again" in caplog.text
    (tmp_path / "s1.slices.npz").write_bytes(slice_bundle(np.zeros((4, 4, 3)), np.zeros((4, 4, 3), int), np.ones((2, 4, 4, 3))))
    assert is_finished(tmp_path, "s1")
    _write(tmp_path / "s1.json", _record("s9"))  # a record of another scan under s1's name
    assert not is_finished(tmp_path, "s1")


def test_slice_bundle_picks_the_slice_with_the_most_attribution_per_class(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((6, 5, 4)).astype(np.float32)
    prediction = rng.integers(0, 3, (6, 5, 4))
    attribution = np.zeros((2, 6, 5, 4), dtype=np.float32)
    attribution[0, :, :, 2] = 0.1  # class 0: slice 2 has mass 3.0
    attribution[0, 0, 0, 1] = -2.0  # slice 1 has 2.0 (absolute values count)
    attribution[1, 3, 3, 0] = -5.0  # class 1: slice 0
    path = tmp_path / "s.slices.npz"
    path.write_bytes(slice_bundle(image, prediction, attribution))
    bundle = read_slices(path)
    np.testing.assert_array_equal(bundle["index"], [2, 0])
    np.testing.assert_allclose(bundle["image"][0], image[:, :, 2], atol=1e-3)  # float16
    np.testing.assert_array_equal(bundle["prediction"][1], prediction[:, :, 0])
    assert bundle["attribution"][1, 3, 3] == 5.0 and bundle["attribution"].dtype == np.float16
    with pytest.raises(ValueError, match="attribution"):
        slice_bundle(image, prediction, attribution[:, :5])


def test_large_slices_are_subsampled_by_an_integer_stride():
    side = 2 * MAX_SLICE_SIDE + 1  # needs stride 3
    image = np.arange(side * 4 * 2, dtype=np.float32).reshape(side, 4, 2)
    data = np.load(io.BytesIO(slice_bundle(image, np.zeros(image.shape, int), np.ones((1, *image.shape)))))
    assert data["image"].shape == (1, 107, 2)  # 321 / 3 and ceil(4 / 3)
    np.testing.assert_array_equal(data["image"][0], image[::3, ::3, 0].astype(np.float16))


def test_slices_need_plain_numeric_arrays_never_pickles(tmp_path):
    assert read_slices(tmp_path / "absent.npz") is None
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, index=np.array([0]), image=np.array([[[object()]]], dtype=object),
             prediction=np.zeros((1, 1, 1)), attribution=np.zeros((1, 1, 1)))
    with pytest.raises(DataError, match="pickled.npz is not a readable slice bundle"):
        read_slices(pickled)
    partial = tmp_path / "partial.npz"
    np.savez(partial, index=np.array([0]), image=np.zeros((1, 2, 2)))
    with pytest.raises(DataError, match="expected numeric arrays"):
        read_slices(partial)
    uneven = tmp_path / "uneven.npz"
    np.savez(uneven, index=np.array([0, 1]), image=np.zeros((1, 2, 2)), prediction=np.zeros((1, 2, 2)),
             attribution=np.zeros((1, 2, 2)))
    with pytest.raises(DataError, match="one slice per class"):
        read_slices(uneven)


def test_records_become_the_published_columns_with_metadata():
    records = [_record("s1"), scan_record("s2", CLASSES, REGIONS, np.full((2, 3), 1 / 3), np.ones((2, 3)))]
    metadata = {"s1": {"scanner": "A"}, "s2": {"scanner": "B"}}
    frame = records_to_frame(records, metadata)
    assert frame["patient"].tolist() == ["s1", "s2"]
    # the published file spells our "vertebrae" as "vertebraes"
    assert frame.loc[0, "heart_explanation_in_background_mass"] == 0.5
    assert frame.loc[0, "vertebraes_explanation_in_vertebraes_mass"] == 0.75
    assert np.isnan(frame.loc[0, "vertebraes_explanation_in_background_mass"])
    assert frame.loc[0, "vertebraes_explanation_in_vertebraes_mean"] == 0.3
    assert frame.loc[0, "heart_dice"] == 0.9 and np.isnan(frame.loc[1, "heart_dice"])  # s2 has no Dice
    assert frame["scanner"].tolist() == ["A", "B"]
    assert len([c for c in frame.columns if c.endswith("_mass")]) == 6
    table = records_to_table(records, metadata, source="records")
    assert table.ids == ("s1", "s2") and table.classes == tuple(CLASSES) and table.regions == tuple(REGIONS)
    np.testing.assert_allclose(table.mass[0], [[0.5, 0.5, 0.0], [np.nan, 0.25, 0.75]])
    np.testing.assert_allclose(table.dice, [[0.9, np.nan], [np.nan, np.nan]])
    assert list(table.metadata.columns) == ["scanner"]  # a region that is no explained class is not metadata


def test_records_of_other_classes_or_none_are_refused():
    other = scan_record("s2", ["heart"], REGIONS, np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(DataError, match="scan 's2' was explained for other classes/regions than scan 's1'"):
        records_to_frame([_record("s1"), other])
    with pytest.raises(DataError, match="no finished scan"):
        records_to_frame([])


def test_evidence_round_trips_and_old_records_leave_it_out(tmp_path):
    from agg2exp_lightning.audit.scan_records import read_record, records_to_table, scan_record

    ev = {"prediction": {"volume_ml": [10.0, None], "components": [1.0, None], "confidence": [0.9, None], "entropy": [0.2, None]},
          "attribution": {"mass": [3.0, 4.0], "outside_body": [0.1, 0.0]}}
    new = scan_record("a", ["heart", "aorta"], ["heart", "aorta"], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], evidence=ev)
    old = scan_record("b", ["heart", "aorta"], ["heart", "aorta"], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    path = tmp_path / "a.json"
    path.write_text(json.dumps(new))
    assert read_record(path, "a")["evidence"] == ev
    table = records_to_table([new, old], source="test")
    i, j = table.classes.index("heart"), table.classes.index("aorta")  # the table orders classes by label id
    np.testing.assert_array_equal(table.evidence["prediction"][0, i], [10.0, 1.0, 0.9, 0.2])
    assert np.isnan(table.evidence["prediction"][0, j]).all() and np.isnan(table.evidence["attribution"][1]).all()
    bad = dict(new, evidence={"prediction": {"volume_ml": [1.0]}})
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="'evidence'"):
        read_record(path, "a")

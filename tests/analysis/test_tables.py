"""Reading tables in the published column format (known answers on the real published file)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agg2exp_lightning import THORAX_CLASSES
from agg2exp_lightning.analysis.tables import parse_explanation_table, read_explanation_table, to_published_frame
from agg2exp_lightning.errors import DataError


def test_published_table_parses_with_vertebraes_mapped_to_ours(published_table):
    raw = pd.read_csv(published_table)
    table = read_explanation_table(published_table)
    assert table.classes == THORAX_CLASSES and table.regions == THORAX_CLASSES
    assert table.mass.shape == (32, 17, 17) and table.mean.shape == (32, 17, 17) and table.dice.shape == (32, 17)
    v = THORAX_CLASSES.index("vertebrae")
    h = THORAX_CLASSES.index("heart")
    np.testing.assert_array_equal(table.mass[:, v, h], raw["vertebraes_explanation_in_heart_mass"])
    np.testing.assert_array_equal(table.mass[:, h, v], raw["heart_explanation_in_vertebraes_mass"])
    np.testing.assert_array_equal(table.dice[:, v], raw["vertebraes_dice"])
    np.testing.assert_array_equal(table.iou[:, v], raw["vertebraes_iou"])
    assert table.ids == tuple(raw["patient"]) and table.metadata.shape == (32, 0)
    np.testing.assert_allclose(table.mass.sum(axis=2), 1.0, atol=1e-5)  # the README's invariant


def test_published_round_trip_is_exact(published_table):
    raw = pd.read_csv(published_table)
    out = to_published_frame(read_explanation_table(published_table))
    assert list(out.columns) == list(raw.columns)
    np.testing.assert_array_equal(out.drop(columns="patient").to_numpy(float), raw.drop(columns="patient").to_numpy(float))


def test_our_spelling_and_image_id_accepted(make_frame):
    frame = make_frame(5, classes=("background", "vertebrae")).rename(columns={"patient": "image_id"})
    table = parse_explanation_table(frame)
    assert table.classes == ("background", "vertebrae") and table.ids[0] == "s0000"
    assert list(table.metadata.columns) == ["scanner", "age", "sex"]


def test_missing_mass_columns_are_named(make_frame):
    frame = make_frame(5).drop(columns=["aorta_explanation_in_heart_mass", "heart_explanation_in_ribs_mass"])
    with pytest.raises(DataError, match=r"missing 2 'mass' column\(s\).*aorta_explanation_in_heart_mass.*heart_explanation_in_ribs_mass"):
        parse_explanation_table(frame, source="t.csv")


def test_table_without_explanations_or_ids_is_refused(make_frame):
    with pytest.raises(DataError, match="no columns named"):
        parse_explanation_table(pd.DataFrame({"patient": ["a"], "age": [3]}))
    with pytest.raises(DataError, match="id column named one of"):
        parse_explanation_table(make_frame(3).drop(columns="patient"))
    dup = make_frame(3)
    dup.loc[2, "patient"] = "s0000"
    with pytest.raises(DataError, match="duplicates"):
        parse_explanation_table(dup)


def test_non_numeric_share_is_refused_and_missing_tokens_read_as_nan(make_frame):
    frame = make_frame(4).astype({"aorta_explanation_in_heart_mass": object})
    frame.loc[1, "aorta_explanation_in_heart_mass"] = "n/a"
    table = parse_explanation_table(frame)
    assert np.isnan(table.mass[1, 1, 3]) and np.isfinite(table.mass[0, 1, 3])
    frame.loc[2, "aorta_explanation_in_heart_mass"] = "<b>0.3</b>"
    with pytest.raises(DataError, match=r"'aorta_explanation_in_heart_mass' must be numeric.*<b>0.3</b>"):
        parse_explanation_table(frame)


def test_two_spellings_of_one_column_are_refused(make_frame):
    frame = make_frame(3, classes=("background", "vertebrae"))
    frame["vertebraes_dice"] = frame["vertebrae_dice"]
    with pytest.raises(DataError, match="two spellings"):
        parse_explanation_table(frame)


def test_metadata_file_joined_on_id(tmp_path, make_frame):
    frame = make_frame(4).drop(columns=["scanner", "age", "sex"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    # TotalSegmentator's meta.csv: semicolon-separated, UTF-8 BOM, image_id; one scan missing
    (tmp_path / "meta.csv").write_text("\ufeffimage_id;age;institute\ns0002;71;X\ns0000;44;Y\ns9999;1;Z\n", encoding="utf-8")
    table = read_explanation_table(tmp_path / "t.csv", metadata=tmp_path / "meta.csv")
    assert list(table.metadata.columns) == ["age", "institute"]
    assert table.metadata.loc["s0000", "age"] == "44" and table.metadata.loc["s0002", "age"] == "71"
    assert pd.isna(table.metadata.loc["s0001", "age"]) and pd.isna(table.metadata.loc["s0003", "age"])
    assert table.metadata.loc["s0002", "institute"] == "X" and table.metadata["institute"].isna().sum() == 2


def test_a_missing_dice_column_is_refused_like_a_missing_mass_column(make_frame, tmp_path, capsys):
    frame = make_frame(5)
    assert "heart_dice" in frame.columns
    with pytest.raises(DataError, match=r"missing 1 'dice' column\(s\) for explained classes: \['heart_dice'\]"):
        parse_explanation_table(frame.drop(columns="heart_dice"), source="t.csv")
    # an empty Dice cell is still allowed (unknown for that scan), and no Dice columns at all is a table without Dice
    frame.loc[0, "heart_dice"] = np.nan
    assert np.isnan(parse_explanation_table(frame).dice).sum() == 1
    assert parse_explanation_table(frame.drop(columns=[c for c in frame.columns if c.endswith("_dice")])).dice is None
    # the table audit says it in one line and exits 2
    from agg2exp_lightning.audit.cli import main

    make_frame(12).drop(columns="heart_dice").to_csv(tmp_path / "t.csv", index=False)
    assert main(["--from-table", str(tmp_path / "t.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("agg2exp-audit: error: ") and "heart_dice" in err[0], err
    assert not (tmp_path / "out").exists()

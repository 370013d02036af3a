"""The synthetic thorax cohort: TotalSegmentator layout, determinism, anatomy, planted conditions, CLI."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from agg2exp_lightning.data import synthetic
from agg2exp_lightning.data.phantom import PLANTED_CONDITIONS, STRUCTURES, generate_subject
from agg2exp_lightning.data.synthetic import generate_cohort, main, plan_cohort, save_preview
from agg2exp_lightning.errors import DataError
from agg2exp_lightning.labels import THORAX_CLASSES, load_structure_mapping

TS_COLUMNS = [
    "image_id", "age", "gender", "institute", "study_type", "split", "manufacturer", "scanner_model", "kvp",
    "pathology", "pathology_location",
]
MAPPED = [s for structures in load_structure_mapping().values() for s in structures]
SMALL = {"shape": (40, 40, 40), "spacing": 8.0}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask > 0).mean(axis=0)
    return (affine @ np.append(ijk, 1.0))[:3]


def _read_meta(root: Path) -> tuple[bytes, list[str], list[dict[str, str]]]:
    raw = (root / "meta.csv").read_bytes()
    lines = raw.decode("utf-8-sig").splitlines()
    header = lines[0].split(";")
    return raw, header, [dict(zip(header, line.split(";"))) for line in lines[1:]]


@pytest.fixture(scope="module")
def default_subject():
    """One subject on the default 80^3 / 4 mm grid."""
    return generate_subject(_rng(0))


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort") / "thorax"
    generate_cohort(root, 4, seed=1, progress=False, conditions={0: "mirrored_heart", 2: "pleural_effusion"}, **SMALL)
    return root


# ---- layout ---------------------------------------------------------------------------------------------
def test_cohort_layout_matches_totalsegmentator(small_cohort):
    root = small_cohort
    visible = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    assert visible == ["meta.csv", "s0000", "s0001", "s0002", "s0003"]
    raw, header, rows = _read_meta(root)
    assert raw.startswith(b"\xef\xbb\xbf")
    assert header == TS_COLUMNS + ["planted_condition", "degraded"]
    assert [r["image_id"] for r in rows] == ["s0000", "s0001", "s0002", "s0003"]
    for r in rows:
        assert r["gender"] in ("m", "f") and 20 <= int(r["age"]) <= 90 and int(r["kvp"]) in (100, 120)
        assert r["split"] in ("train", "val", "test") and r["degraded"] in ("0", "1")
        assert r["planted_condition"] in PLANTED_CONDITIONS
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert [r["planted_condition"] for r in rows] == ["mirrored_heart", "none", "pleural_effusion", "none"]

    for sid in ("s0000", "s0003"):
        folder = root / sid
        assert sorted(p.name for p in folder.iterdir()) == ["ct.nii.gz", "segmentations"]
        ct = nib.load(folder / "ct.nii.gz")
        assert ct.get_data_dtype() == np.int16 and ct.shape == (40, 40, 40)
        assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
        np.testing.assert_allclose(np.diag(ct.affine)[:3], 8.0)
        assert ct.header.get_xyzt_units()[0] == "mm"
        names = {p.name[: -len(".nii.gz")] for p in (folder / "segmentations").glob("*.nii.gz")}
        assert names == set(STRUCTURES)
        assert set(MAPPED) < names and {"esophagus", "spinal_cord", "vertebrae_C7", "vertebrae_L1"} <= names - set(MAPPED)
        for name in ("heart", "rib_left_3", "spinal_cord"):
            img = nib.load(folder / "segmentations" / f"{name}.nii.gz")
            data = np.asarray(img.dataobj)
            assert img.get_data_dtype() == np.uint8 and data.dtype == np.uint8
            assert set(np.unique(data)) <= {0, 1} and data.shape == ct.shape
            np.testing.assert_array_equal(img.affine, ct.affine)


def test_project_reader_loads_the_cohort(small_cohort):
    from agg2exp_lightning.data.totalsegmentator import load_totalsegmentator_subject, read_meta_csv

    meta = read_meta_csv(small_cohort / "meta.csv")
    assert list(meta.columns[:11]) == TS_COLUMNS and len(meta) == 4
    ct, labels, affine = load_totalsegmentator_subject(small_cohort / "s0001", load_structure_mapping())
    assert ct.shape == labels.shape == (40, 40, 40)
    assert set(np.unique(labels)) == set(range(len(THORAX_CLASSES)))  # every thorax label, even at 8 mm


# ---- determinism ----------------------------------------------------------------------------------------
def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b, c = (generate_subject(_rng(s), **SMALL) for s in (5, 5, 6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    for name in STRUCTURES:
        np.testing.assert_array_equal(a[1][name], b[1][name])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1]["heart"], c[1]["heart"])


def test_a_subject_does_not_change_when_the_cohort_grows():
    three, five = plan_cohort(3, seed=4), plan_cohort(5, seed=4)
    assert [dataclasses.replace(p, split="") for p in three] == [dataclasses.replace(p, split="") for p in five[:3]]
    hu3, masks3, _ = synthetic._generate_planned(three[2], (32, 32, 32), 10.0)
    hu5, masks5, _ = synthetic._generate_planned(five[2], (32, 32, 32), 10.0)
    np.testing.assert_array_equal(hu3, hu5)
    np.testing.assert_array_equal(masks3["aorta"], masks5["aorta"])
    assert [p.sex for p in plan_cohort(12, seed=4)] != [p.sex for p in plan_cohort(12, seed=5)]


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10, 36])
def test_splits_are_non_empty_and_deterministic(n):
    splits = [p.split for p in plan_cohort(n, seed=3)]
    assert {"train", "val", "test"} <= set(splits)
    assert splits == [p.split for p in plan_cohort(n, seed=3)]
    if n == 36:
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (26, 5, 5)


# ---- anatomy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sex,age,seed", [("m", 50, 0), ("f", 90, 11), ("f", 20, 12), ("m", 85, 13)])
def test_every_mapped_structure_present_and_masks_disjoint(sex, age, seed, default_subject):
    hu, masks, _ = default_subject if seed == 0 else generate_subject(_rng(seed), sex=sex, age=age)
    empty = [name for name in MAPPED if not masks[name].any()]
    assert not empty
    total = np.sum([masks[name] for name in STRUCTURES], axis=0, dtype=np.int32)
    assert total.max() == 1


def test_hu_levels_are_plausible_per_tissue(default_subject):
    hu, masks, _ = default_subject
    med = {name: float(np.median(hu[m > 0])) for name, m in masks.items() if m.any()}
    lungs = np.logical_or.reduce([masks[n] > 0 for n in MAPPED if n.startswith("lung_")])
    assert np.median(hu[lungs]) < -700
    assert min(med[f"rib_{s}_{k}"] for s in ("left", "right") for k in range(2, 11)) > 300
    assert med["sternum"] > 300 and med["vertebrae_T6"] > 300
    assert 60 < med["heart"] < 140
    assert med["aorta"] > med["pulmonary_vein"] + 30 > med["heart"] + 60
    assert med["thyroid_gland"] > med["heart"] + 30
    assert 50 < med["autochthon_left"] < 110 and 50 < med["autochthon_right"] < 110
    assert med["costal_cartilages"] > med["autochthon_left"] + 50
    lumen = ndimage.binary_erosion(masks["trachea"] > 0, iterations=1)
    assert np.median(hu[lumen]) < -800
    assert np.median(hu[:4, :4, :]) < -950  # air outside the body


def test_noise_sd_is_honoured():
    hu, masks, _ = generate_subject(_rng(2), noise_sd=40.0, blur_mm=0.0)
    core = ndimage.binary_erosion(masks["heart"] > 0, iterations=2)
    assert 0.85 * 40 < hu[core].std() < 1.2 * 40
    hu, masks, _ = generate_subject(_rng(2), noise_sd=0.0, blur_mm=0.0)
    assert hu[core].std() < 8  # only the gentle bias field is left


def test_anatomy_is_arranged_as_in_a_thorax(default_subject):
    _, masks, aff = default_subject
    c = {name: _world_centroid(m, aff) for name, m in masks.items()}  # RAS mm: +x right, +y anterior, +z up
    zmin = {name: (aff @ [0, 0, np.argwhere(m)[:, 2].min(), 1])[2] for name, m in masks.items()}
    zmax = {name: (aff @ [0, 0, np.argwhere(m)[:, 2].max(), 1])[2] for name, m in masks.items()}
    thoracic = np.logical_or.reduce([masks[f"vertebrae_T{k}"] > 0 for k in range(1, 13)])
    spine = _world_centroid(thoracic, aff)
    # cranio-caudal
    assert zmin["trachea"] > c["heart"][2] and zmax["heart"] < zmin["trachea"] + 10
    assert c["thyroid_gland"][2] > zmax["aorta"] > zmin["trachea"]
    levels = ["C7"] + [f"T{k}" for k in range(1, 13)] + ["L1"]
    assert all(c[f"vertebrae_{a}"][2] > c[f"vertebrae_{b}"][2] for a, b in zip(levels, levels[1:]))
    for side in ("left", "right"):
        assert all(c[f"rib_{side}_{k}"][2] > c[f"rib_{side}_{k + 1}"][2] for k in range(1, 12))
        assert c[f"lung_upper_lobe_{side}"][2] > c[f"lung_lower_lobe_{side}"][2]
    assert c["lung_upper_lobe_right"][2] > c["lung_middle_lobe_right"][2]
    # antero-posterior
    assert c["sternum"][1] > c["heart"][1] > spine[1] > c["autochthon_left"][1]
    assert c["lung_middle_lobe_right"][1] > c["lung_lower_lobe_right"][1]
    assert c["trachea"][1] > c["esophagus"][1] > spine[1]
    # left-right (the patient's left is at negative x)
    assert c["heart"][0] < 0 and c["autochthon_left"][0] < 0 < c["autochthon_right"][0]
    for left in ("lung_upper_lobe_left", "lung_lower_lobe_left"):
        for right in ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"):
            assert c[left][0] < -40 and c[right][0] > 40
    assert all(c[f"rib_left_{k}"][0] < -50 and c[f"rib_right_{k}"][0] > 50 for k in range(1, 13))
    low = masks["aorta"][:, :, np.argwhere(masks["aorta"])[:, 2].min()]
    assert _world_centroid(low[:, :, None], aff)[0] < 0  # descending aorta on the left
    # connections: veins reach the heart and the lungs, cartilages join ribs to the sternum
    grow = ndimage.generate_binary_structure(3, 1)
    veins = ndimage.binary_dilation(masks["pulmonary_vein"] > 0, grow)
    assert (veins & (masks["heart"] > 0)).any() and (veins & (masks["lung_upper_lobe_right"] > 0)).any()
    cart = ndimage.binary_dilation(masks["costal_cartilages"] > 0, grow)
    assert (cart & (masks["sternum"] > 0)).any() and (cart & (masks["rib_left_5"] > 0)).any()


def test_structures_are_thick_enough_at_the_training_spacing():
    """At 5 mm, >= 75% of every thorax label lies in 2x2x2 blocks of it, and each has a 3-voxel-thick core."""
    _, masks, _ = generate_subject(_rng(21), (64, 64, 64), 5.0, sex="f", age=30)
    thin = []
    for label, structures in load_structure_mapping().items():
        merged = np.logical_or.reduce([masks[s] > 0 for s in structures])
        two = ndimage.binary_opening(merged, np.ones((2, 2, 2), bool)).sum() / merged.sum()
        three = ndimage.binary_erosion(merged, ndimage.generate_binary_structure(3, 1)).sum()
        if two < 0.75 or three == 0:
            thin.append((label, round(float(two), 2), int(three)))
    assert not thin


# ---- planted conditions -----------------------------------------------------------------------------------
def test_missing_lobe_is_absorbed_by_the_upper_lobe():
    _, normal, _ = generate_subject(_rng(8), **SMALL)
    _, missing, _ = generate_subject(_rng(8), condition="missing_lobe", **SMALL)
    assert normal["lung_middle_lobe_right"].any() and not missing["lung_middle_lobe_right"].any()
    np.testing.assert_array_equal(
        missing["lung_upper_lobe_right"], normal["lung_upper_lobe_right"] | normal["lung_middle_lobe_right"]
    )


def test_mirrored_heart_sits_on_the_right():
    _, normal, aff = generate_subject(_rng(9), **SMALL)
    _, mirrored, _ = generate_subject(_rng(9), condition="mirrored_heart", **SMALL)
    assert _world_centroid(normal["heart"], aff)[0] < -5 < 5 < _world_centroid(mirrored["heart"], aff)[0]
    assert abs(int(mirrored["heart"].sum()) - int(normal["heart"].sum())) < 0.05 * normal["heart"].sum()


def test_pleural_effusion_replaces_the_bottom_of_a_lower_lobe():
    hu_n, normal, aff = generate_subject(_rng(10))
    hu_e, effusion, _ = generate_subject(_rng(10), condition="pleural_effusion")
    lost = {side: (normal[f"lung_lower_lobe_{side}"] > effusion[f"lung_lower_lobe_{side}"]) for side in ("left", "right")}
    side, other = ("left", "right") if lost["left"].sum() > lost["right"].sum() else ("right", "left")
    fluid = lost[side]
    assert fluid.sum() > 100 and not lost[other].any()
    assert not np.sum([effusion[n][fluid] for n in STRUCTURES]).any()  # the fluid is background
    assert -20 < np.median(hu_e[fluid]) < 50 and np.median(hu_n[fluid]) < -700
    lobe_bottom = _world_centroid(normal[f"lung_lower_lobe_{side}"], aff)
    assert _world_centroid(fluid, aff)[2] < lobe_bottom[2] and _world_centroid(fluid, aff)[1] < lobe_bottom[1]


def test_metal_artefact_changes_only_the_image_near_the_implant():
    hu_n, normal, _ = generate_subject(_rng(11))
    hu_m, metal, _ = generate_subject(_rng(11), condition="metal_artefact")
    for name in STRUCTURES:
        np.testing.assert_array_equal(metal[name], normal[name])
    assert hu_m.max() > 2500 and hu_n.max() < 1500
    changed = np.nonzero(np.any(hu_m != hu_n, axis=(0, 1)))[0]
    assert 0 < changed.size < hu_n.shape[2] // 3
    diff = hu_m[:, :, changed].astype(float) - hu_n[:, :, changed]
    assert diff.max() > 300 and diff.min() < -100  # bright and dark streaks


def test_conditions_by_fraction_and_by_index_are_recorded():
    plans = plan_cohort(10, seed=2, conditions={"pleural_effusion": 0.2, "metal_artefact": 0.1})
    conds = [p.condition for p in plans]
    assert conds.count("pleural_effusion") == 2 and conds.count("metal_artefact") == 1 and conds.count("none") == 7
    effusion = next(p for p in plans if p.condition == "pleural_effusion")
    row = effusion.meta_row()
    assert row["planted_condition"] == "pleural_effusion" and row["pathology"] == "effusion"
    _, planted, _ = synthetic._generate_planned(effusion, **SMALL)
    _, plain, _ = synthetic._generate_planned(dataclasses.replace(effusion, condition="none"), **SMALL)
    lobe = row["pathology_location"]
    assert planted[lobe].sum() < plain[lobe].sum()  # the side named in meta.csv is the side that lost lung
    assert [p.condition for p in plan_cohort(3, conditions={1: "missing_lobe"})] == ["none", "missing_lobe", "none"]


# ---- degraded scanner -------------------------------------------------------------------------------------
def test_degraded_scanner_is_noisier(tmp_path):
    model = plan_cohort(4, seed=0)[0].scanner[2]
    plans = plan_cohort(4, seed=0, degraded_scanner=model)
    assert any(p.degraded for p in plans) and not all(p.degraded for p in plans)
    root = generate_cohort(tmp_path / "c", 4, seed=0, degraded_scanner=model, progress=False, **SMALL)
    _, _, rows = _read_meta(root)
    noise = {}
    for r in rows:
        assert (r["degraded"] == "1") == (r["scanner_model"] == model)
        hu = np.asarray(nib.load(root / r["image_id"] / "ct.nii.gz").dataobj).astype(float)
        muscle = np.asarray(nib.load(root / r["image_id"] / "segmentations" / "heart.nii.gz").dataobj) > 0
        noise[r["image_id"]] = (r["degraded"], hu[ndimage.binary_erosion(muscle)].std())
    worst_clean = max(sd for d, sd in noise.values() if d == "0")
    best_degraded = min(sd for d, sd in noise.values() if d == "1")
    assert best_degraded > 1.8 * worst_clean


# ---- writing: resume, refusal, overwrite -------------------------------------------------------------------
def test_resume_skips_finished_subjects_and_redoes_broken_ones(tmp_path, monkeypatch):
    root = tmp_path / "cohort"
    kwargs = dict(seed=3, shape=(32, 32, 32), spacing=10.0, progress=False)
    generate_cohort(root, 3, **kwargs)
    meta_before = (root / "meta.csv").read_bytes()
    heart = np.asarray(nib.load(root / "s0001" / "segmentations" / "heart.nii.gz").dataobj)
    stamp = os.stat(root / "s0000" / "ct.nii.gz").st_mtime_ns
    calls = []
    real = synthetic.generate_subject
    monkeypatch.setattr(synthetic, "generate_subject", lambda *a, **k: calls.append(1) or real(*a, **k))

    generate_cohort(root, 3, **kwargs)
    assert calls == [] and os.stat(root / "s0000" / "ct.nii.gz").st_mtime_ns == stamp
    assert (root / "meta.csv").read_bytes() == meta_before

    (root / "s0001" / "segmentations" / "heart.nii.gz").unlink()
    (root / ".partial" / "s0002").mkdir(parents=True)  # debris of an interrupted run
    generate_cohort(root, 3, **kwargs)
    assert len(calls) == 1 and not (root / ".partial").exists()
    np.testing.assert_array_equal(np.asarray(nib.load(root / "s0001" / "segmentations" / "heart.nii.gz").dataobj), heart)

    with pytest.raises(DataError, match="seed"):
        generate_cohort(root, 3, **{**kwargs, "seed": 4})
    generate_cohort(root, 3, **{**kwargs, "seed": 4}, overwrite=True)
    assert len(calls) == 4


def test_refuses_a_folder_with_other_content(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt"):
        generate_cohort(tmp_path, 3, progress=False, **SMALL)
    real_ts = tmp_path / "ts"
    (real_ts / "s0000" / "segmentations").mkdir(parents=True)
    (real_ts / "meta.csv").write_text("image_id\ns0000\n")
    with pytest.raises(DataError, match="not written by generate_cohort"):
        generate_cohort(real_ts, 3, progress=False, **SMALL)
    assert (real_ts / "meta.csv").read_text() == "image_id\ns0000\n"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"shape": (0, 40, 40)}, "shape"),
        ({"spacing": -1.0}, "spacing"),
        ({"sex": "x"}, "sex"),
        ({"age": 300}, "age"),
        ({"noise_sd": -3.0}, "noise_sd"),
        ({"condition": "dextrocardia"}, "condition"),
    ],
)
def test_generate_subject_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_subject(_rng(), **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_subjects": 0}, "n_subjects"),
        ({"conditions": {"pleural_efusion": 0.1}}, "did you mean 'pleural_effusion'"),
        ({"conditions": {"pleural_effusion": 1.5}}, "fraction"),
        ({"conditions": {"pleural_effusion": 0.7, "missing_lobe": 0.7}}, "at most"),
        ({"conditions": {9: "missing_lobe"}}, "subject indices"),
        ({"degraded_scanner": "Aquilion"}, "did you mean 'Aquilion ONE'"),
        ({"split_fractions": (1.0, 1.0)}, "split_fractions"),
    ],
)
def test_plan_cohort_rejects_bad_arguments(kwargs, match):
    args = {"n_subjects": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        plan_cohort(args.pop("n_subjects"), **args)


# ---- command line and preview -----------------------------------------------------------------------------
def test_cli_writes_a_cohort_and_a_preview(tmp_path, capsys):
    root, png = tmp_path / "cli", tmp_path / "preview.png"
    argv = [str(root), "--n-subjects", "3", "--seed", "2", "--shape", "32", "--spacing", "10",
            "--condition", "mirrored_heart=0.34", "--quiet", "--preview", str(png)]
    assert main(argv) == 0
    _, _, rows = _read_meta(root)
    assert [r["planted_condition"] for r in rows].count("mirrored_heart") == 1
    assert nib.load(root / "s0002" / "ct.nii.gz").shape == (32, 32, 32)
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image[..., :3].std() > 0.05

    assert main([str(tmp_path / "bad"), "--condition", "mirored_heart=0.5", "--quiet"]) == 2
    assert "did you mean 'mirrored_heart'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(root), "--shape", "32", "32"])


def test_preview_names_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="segmentations"):
        save_preview(tmp_path / "nope", tmp_path / "x.png")

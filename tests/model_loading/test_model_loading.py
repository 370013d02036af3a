"""One loader for every model source: this toolkit's checkpoints, MONAI bundles and factories, with label maps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from factory_models import ThreeClassNet  # noqa: I001 - beside this file

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading import (
    check_resume_checkpoint,
    label_names,
    load_model,
    read_label_map,
    state_dict_mismatch,
)


def _trained_weights(path: Path, out: int = 3, seed: int = 5) -> dict[str, torch.Tensor]:
    """Weights that differ from the factory's seeded ones, so loading them is observable."""
    torch.manual_seed(seed)
    state = ThreeClassNet(out).state_dict()
    torch.save(state, path)
    return state


# -- label maps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    ["background", "liver", "tumour"],
    {"background": 0, "liver": 1, "tumour": 2},
    {"0": "background", "2": "tumour", "1": "liver"},
    {0: "background", 1: "liver", 2: "tumour"},
    {"labels": {"background": 0, "liver": 1, "tumour": 2}},  # nnU-Net dataset.json
    {"channel_def": {"0": "background", "1": "liver", "2": "tumour"}},  # MONAI metadata
])
def test_label_map_formats_give_names_in_channel_order(raw):
    assert label_names(raw, where="m") == ("background", "liver", "tumour")


@pytest.mark.parametrize("raw, message", [
    ({"background": 0, "liver": 2}, "channel ids 0 .. 1"),
    ({"background": 0, "liver": 0}, "channel ids repeat"),
    (["background", "background"], "class names repeat"),
    (["background"], "at least 2 classes"),
    ("liver", "expected a list of names"),
])
def test_bad_label_maps_are_refused_naming_the_problem(raw, message):
    with pytest.raises(DataError, match=message):
        label_names(raw, where="m")


def test_label_map_files_json_and_yaml(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"background": 0, "a": 1}))
    (tmp_path / "m.yaml").write_text("0: background\n1: a\n")
    assert read_label_map(tmp_path / "m.json") == read_label_map(tmp_path / "m.yaml") == ("background", "a")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        read_label_map(tmp_path / "bad.json")
    with pytest.raises(DataError, match="missing.yaml does not exist"):
        read_label_map(tmp_path / "missing.yaml")


def test_state_dict_mismatch_names_keys_and_shapes():
    a = {"head.weight": torch.zeros(3, 8), "head.bias": torch.zeros(3), "aux": torch.zeros(1)}
    b = {"head.weight": torch.zeros(2, 8), "head.bias": torch.zeros(2), "body": torch.zeros(1)}
    text = state_dict_mismatch(a, b)
    assert "head.weight (3, 8) in the file, (2, 8) in the model" in text and "head.bias (3,)" in text
    assert "missing weights ['body']" in text and "unexpected weights ['aux']" in text
    assert state_dict_mismatch(a, a) == ""


# -- factories ----------------------------------------------------------------------------------
def test_factory_loads_the_weights_file_and_the_label_map(tmp_path):
    state = _trained_weights(tmp_path / "w.pt")
    (tmp_path / "labels.yaml").write_text("0: background\n1: liver\n2: tumour\n")
    loaded = load_model("factory_models:build", weights=tmp_path / "w.pt", label_map=tmp_path / "labels.yaml")
    assert loaded.kind == "factory" and loaded.class_names == ("background", "liver", "tumour")
    assert not loaded.model.training
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, state[k])  # the file's weights, not the factory's seeded ones
    assert loaded.roi_size is None and loaded.window == {}
    # a Lightning checkpoint of a module holding the network as `net` works too (prefix stripped)
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "l.ckpt")
    again = load_model("factory_models:build", weights=tmp_path / "l.ckpt", label_map=["bg", "a", "b"])
    torch.testing.assert_close(again.model.head.weight, state["head.weight"])


def test_factory_without_label_map_counts_channels_by_a_forward_pass(tmp_path):
    _trained_weights(tmp_path / "w.pt")
    assert load_model("factory_models:build", weights=tmp_path / "w.pt").class_names == ("class_0", "class_1", "class_2")


def test_factory_weights_of_another_shape_are_refused_naming_the_keys(tmp_path):
    _trained_weights(tmp_path / "w4.pt", out=4)
    with pytest.raises(DataError) as err:
        load_model("factory_models:build", weights=tmp_path / "w4.pt")
    text = str(err.value)
    assert "w4.pt" in text and "factory_models:build" in text
    assert "head.weight (4, 1, 1, 1, 1) in the file, (3, 1, 1, 1, 1) in the model" in text and "head.bias (4,)" in text


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:build", "module 'no_such_module_xyz' cannot be imported"),
    ("factory_models:nothing", "has no attribute 'nothing'"),
    ("factory_models:not_a_module", "returned str, expected a torch.nn.Module"),
    ("factory_models:broken", "failed: RuntimeError: the factory's own bug"),
])
def test_bad_factories_are_named(spec, message):
    with pytest.raises(DataError, match=message):
        load_model(spec)


def test_label_map_count_must_match_the_output_channels(tmp_path):
    _trained_weights(tmp_path / "w.pt")
    with pytest.raises(DataError, match=r"names 2 classes, but the model of factory factory_models:build has 3 output channels"):
        load_model("factory_models:build", weights=tmp_path / "w.pt", label_map=["background", "liver"])


def test_weights_belong_to_factories_only(tmp_path):
    _make_bundle(tmp_path / "b")
    with pytest.raises(DataError, match="--weights belongs to a model factory"):
        load_model(tmp_path / "b", weights=tmp_path / "w.pt")


def test_an_nn_module_with_a_label_map():
    loaded = load_model(ThreeClassNet(), label_map=["bg", "a", "b"])
    assert loaded.kind == "module" and loaded.class_names == ("bg", "a", "b")
    with pytest.raises(DataError, match="names 4 classes, but ThreeClassNet has 3 output channels"):
        load_model(ThreeClassNet(), label_map=["bg", "a", "b", "c"])


# -- MONAI bundles ------------------------------------------------------------------------------
def _make_bundle(root: Path, *, fmt: str = "json", channel_def: dict | None = None, out: int = 3) -> dict[str, torch.Tensor]:
    """A bundle folder as MONAI's model zoo lays it out, with a tiny UNet."""
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "pixdim": [1.5, 1.5, 2.0],
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": out,
                        "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 16], "sw_batch_size": 4, "overlap": 0.5},
        "dataset": {"_target_": "Dataset", "data": "$list(range(3))"},  # never built: only network_def is
    }
    if fmt == "json":
        (root / "configs" / "inference.json").write_text(json.dumps(config))
    else:
        (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    meta = {"network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "num_channels": out,
                             "channel_def": channel_def if channel_def is not None else {"0": "background", "1": "spleen", "2": "liver"}}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.manual_seed(7)
    state = UNet(3, 1, out, (4, 8), (2,), num_res_units=0).state_dict()
    torch.save(state, root / "models" / "model.pt")
    return state


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_bundle_folder_gives_network_weights_names_and_settings(tmp_path, fmt):
    state = _make_bundle(tmp_path / "bundle", fmt=fmt)
    loaded = load_model(tmp_path / "bundle")
    assert loaded.kind == "bundle" and loaded.class_names == ("background", "spleen", "liver")
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert loaded.spacing == (1.5, 1.5, 2.0)
    assert loaded.window == {"roi_size": (32, 32, 16), "sw_batch_size": 4, "overlap": 0.5, "mode": "constant",
                             "sigma_scale": 0.125}
    assert loaded.model(torch.zeros(1, 1, 32, 32, 16)).shape == (1, 3, 32, 32, 16)
    # a label map file replaces the metadata's names
    renamed = load_model(tmp_path / "bundle", label_map=["bg", "a", "b"])
    assert renamed.class_names == ("bg", "a", "b")


def test_bundle_metadata_with_wrong_count_and_mismatching_weights(tmp_path):
    _make_bundle(tmp_path / "b1", channel_def={"0": "background", "1": "spleen"})
    with pytest.raises(DataError, match=r"class names \(2\) do not match its 3 output channels"):
        load_model(tmp_path / "b1")
    _make_bundle(tmp_path / "b2")
    torch.save({"model.0.conv.weight": torch.zeros(1)}, tmp_path / "b2" / "models" / "model.pt")
    with pytest.raises(DataError, match=r"bundle weights .*model.pt: expected the weights of the network_def .*missing weights"):
        load_model(tmp_path / "b2")


def test_folder_that_is_no_bundle_and_bundle_without_network_def(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="is a folder but neither a MONAI bundle"):
        load_model(tmp_path / "plain")
    _make_bundle(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "configs" / "inference.json").read_text())
    del cfg["network_def"]
    (tmp_path / "b" / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="has no 'network_def' entry"):
        load_model(tmp_path / "b")


# -- this toolkit's checkpoints -----------------------------------------------------------------
def _tiny_module(**kw):
    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    return SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32), norm_name=("group", {"num_groups": 3}), **kw)


def test_toolkit_checkpoint_with_its_names_spacing_and_windows(tmp_path):
    module = _tiny_module(sw_batch_size=3, num_classes=4, class_names=["background", "a", "b", "c"])
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": {"spacing": [2.0, 2.0, 3.0]}}, tmp_path / "m.ckpt")
    loaded = load_model(tmp_path / "m.ckpt")
    assert loaded.kind == "checkpoint" and loaded.class_names == ("background", "a", "b", "c")
    assert loaded.spacing == (2.0, 2.0, 3.0) and loaded.roi_size == (32, 32, 32) and loaded.sw_batch_size == 3
    assert len(loaded.identity["checkpoint_sha256"]) == 64
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, module.state_dict()[k])
    with pytest.raises(DataError, match=r"names 3 classes, but checkpoint .*m.ckpt has 4 output channels"):
        load_model(tmp_path / "m.ckpt", label_map=["x", "y", "z"])


def test_toolkit_checkpoint_with_shapes_of_another_model_names_them(tmp_path):
    module = _tiny_module()
    state = dict(module.state_dict())
    key = next(k for k in state if k.endswith("out.conv.conv.weight"))
    state[key] = torch.zeros(5, *state[key].shape[1:])
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams)}, tmp_path / "m.ckpt")
    with pytest.raises(DataError, match=rf"shapes differ: {key} \(5, 12, 1, 1, 1\) in the file, \(17, 12, 1, 1, 1\) in the model"):
        load_model(tmp_path / "m.ckpt")


def test_resume_check_names_the_file_and_what_differs(tmp_path):
    module = _tiny_module()
    torch.save({"state_dict": module.state_dict()}, tmp_path / "bare.ckpt")
    with pytest.raises(DataError, match=r"cannot resume from checkpoint .*bare.ckpt: expected a Lightning checkpoint with .* lacks \['optimizer_states'"):
        check_resume_checkpoint(tmp_path / "bare.ckpt", module)
    full = {"state_dict": module.state_dict(), "optimizer_states": [], "loops": {}, "global_step": 0,
            "hyper_parameters": dict(module.hparams)}
    torch.save(full, tmp_path / "ok.ckpt")
    check_resume_checkpoint(tmp_path / "ok.ckpt", module)  # fits: no error
    other = _tiny_module(num_classes=4)
    with pytest.raises(DataError, match=r"another model .*num_classes=17 in the checkpoint, 4 configured"):
        check_resume_checkpoint(tmp_path / "ok.ckpt", other)
    (tmp_path / "trunc.ckpt").write_bytes((tmp_path / "ok.ckpt").read_bytes()[:100])
    with pytest.raises(DataError, match=r"cannot resume from checkpoint .*trunc.ckpt: it cannot be read with weights_only=True .*truncated or corrupt.*--resume never"):
        check_resume_checkpoint(tmp_path / "trunc.ckpt", module)

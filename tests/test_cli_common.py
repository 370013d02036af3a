"""One vocabulary across the commands: the same flags, one method-option syntax, --version, help everywhere."""
from __future__ import annotations

import argparse

import pytest
import torch

from agg2exp_lightning import __version__
from agg2exp_lightning.cli_common import (
    MethodOption,
    describe_os_error,
    method_options_for,
    parse_devices,
    parse_method_options,
    single_device,
)


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from agg2exp_lightning.audit.cli import build_parser as audit_parser
    from agg2exp_lightning.data.synthetic import build_parser as cohort_parser
    from agg2exp_lightning.evaluation.cli import build_parser as compare_parser

    return {"agg2exp-audit": audit_parser(), "agg2exp-compare-methods": compare_parser(), "agg2exp-make-cohort": cohort_parser()}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("name", ["agg2exp-audit", "agg2exp-compare-methods", "agg2exp-make-cohort"])
def test_every_option_has_help_and_version_prints_the_package_version(name, capsys):
    parser = _parsers()[name]
    undocumented = [a.option_strings or a.dest for a in parser._actions if not (a.help or "").strip() or a.help == argparse.SUPPRESS]
    assert undocumented == []
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"{name} {__version__}"


def test_audit_and_comparison_share_the_model_device_and_method_option_flags():
    audit, compare = (_options(p) for p in (_parsers()["agg2exp-audit"], _parsers()["agg2exp-compare-methods"]))
    for flag in ("--model", "--checkpoint", "--weights", "--label-map", "--targets", "--accelerator", "--devices",
                 "--method-option", "--spacing", "--split", "--out", "--quiet", "-q"):
        assert flag in audit and flag in compare, flag
    for flag in ("--weights", "--label-map", "--method-option", "--accelerator"):
        assert (audit[flag].help, audit[flag].metavar) == (compare[flag].help, compare[flag].metavar), flag
    assert audit["--checkpoint"] is audit["--model"]  # the old spelling is an alias
    assert "--mapping-file" in audit and "--strategy" in audit and "--device" not in compare


def test_method_options_one_syntax():
    parsed = parse_method_options(["n_samples=10", "sg.noise=0.2", "integrated_gradients.baseline=zeros", "shape=[8, 8, 8]"])
    assert parsed == [MethodOption(None, "n_samples", 10), MethodOption("smoothgrad", "noise", 0.2),
                      MethodOption("integrated_gradients", "baseline", "zeros"), MethodOption(None, "shape", [8, 8, 8])]
    assert method_options_for(parsed, "smoothgrad") == {"n_samples": 10, "noise": 0.2, "shape": [8, 8, 8]}
    assert method_options_for(parse_method_options(["n_samples=3", "smoothgrad.n_samples=5"]), "smoothgrad") == {"n_samples": 5}
    with pytest.raises(ValueError, match=r"Expected --method-option as \[METHOD.\]KEY=VALUE"):
        parse_method_options(["n_samples"])
    with pytest.raises(ValueError, match="'smoothgard' is not a method.*did you mean 'smoothgrad'"):
        parse_method_options(["smoothgard.n_samples=1"], ["smoothgrad", "vanilla_gradient"])


def test_devices_in_lightnings_spelling():
    assert (parse_devices("2"), parse_devices("0,1"), parse_devices("1,"), parse_devices("auto"), parse_devices("-1")) == (2, [0, 1], [1], "auto", -1)
    with pytest.raises(ValueError, match="`--devices`"):
        parse_devices("two")
    assert single_device("cpu", "1") == torch.device("cpu")
    with pytest.raises(ValueError, match="one device"):
        single_device("cpu", "0,1")
    with pytest.raises(ValueError, match="`--accelerator`.*did you mean 'cuda'"):
        single_device("cdua", "1")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such CUDA device"):
            single_device("gpu", "1")


def test_os_errors_name_the_output_folder(tmp_path):
    inside = OSError(28, "No space left on device", str(tmp_path / "out" / "summary.json"))
    assert describe_os_error(inside, tmp_path / "out").startswith(f"cannot write to the output folder {tmp_path / 'out'}")
    outside = OSError(13, "Permission denied", str(tmp_path / "data.csv"))
    assert describe_os_error(outside, tmp_path / "out") == f"cannot access {tmp_path / 'data.csv'}: Permission denied (EACCES)"


@pytest.mark.parametrize("command", ["agg2exp-audit", "agg2exp-compare-methods"])
def test_both_commands_refuse_bad_model_sources_with_one_line_and_exit_2(command, tmp_path, capsys):
    from agg2exp_lightning.audit.cli import main as audit_main
    from agg2exp_lightning.evaluation.cli import main as compare_main

    main = audit_main if command == "agg2exp-audit" else compare_main
    (tmp_path / "labels.json").write_text('["background", "a", "b", "c"]')
    torch.save({"weight": torch.zeros(3, 1, 1, 1, 1), "bias": torch.zeros(3)}, tmp_path / "w.pt")
    cases = [
        (["--model", "no_such_pkg_xyz:build"], "model factory 'no_such_pkg_xyz:build': module 'no_such_pkg_xyz' cannot be imported"),
        (["--model", "torch.nn:Conv3d"], "model factory 'torch.nn:Conv3d' failed: TypeError"),  # needs arguments
        (["--model", "math:pi"], "'pi' is a float, expected a callable"),
        (["--model", "torch.nn:Identity", "--weights", str(tmp_path / "w.pt")], "unexpected weights ['bias', 'weight']"),
        # Identity passes the one input channel through: a probe forward counts 1 output channel
        (["--model", "torch.nn:Identity", "--label-map", str(tmp_path / "labels.json")],
         "labels.json names 4 classes, but the model of factory torch.nn:Identity has 1 output channels"),
    ]
    for extra, message in cases:
        assert main([*extra, "--data", str(tmp_path), "--out", str(tmp_path / "out"), "-q"]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"{command}: error: ") and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("module", "argv", "needle"), [
    ("agg2exp_lightning.audit.cli", ["--from-table", "t.csv", "--out", "o", "--contamination", "2"], "--contamination must be a number in (0, 0.5]"),
    ("agg2exp_lightning.audit.cli", ["--from-table", "t.csv", "--out", "o", "--contamination", "abc"], "invalid float value: 'abc'"),
    ("agg2exp_lightning.data.synthetic", ["root", "--n-subjects", "x"], "invalid int value: 'x'"),
    ("agg2exp_lightning.evaluation.cli", ["--no-such-option"], "the following arguments are required: --model/--checkpoint"),
])
def test_cli_value_errors_are_one_line_without_the_usage_block(module, argv, needle, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "usage:" not in err[0] and err[0].endswith("--help)"), err

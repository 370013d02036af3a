"""The ``agg2exp-train`` command line: subcommands, shortcuts, shipped configs, help, no warning at start."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from agg2exp_lightning.training import main, named_configs
from agg2exp_lightning.training.configs import expand_shortcuts


def test_shortcuts_expand_to_lightning_subcommands():
    demo = str(named_configs()["demo"])
    assert expand_shortcuts(["demo", "--trainer.max_epochs=1"]) == ["fit", "--config", demo, "--trainer.max_epochs=1"]
    assert expand_shortcuts(["--config", "my.yaml"]) == ["fit", "--config", "my.yaml"]  # no subcommand: fit
    assert expand_shortcuts(["validate", "--config", "demo", "--config=paper"]) == [
        "validate", "--config", demo, f"--config={named_configs()['paper']}"]
    assert expand_shortcuts(["--help"]) == ["--help"]


def test_a_file_named_like_a_shipped_config_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("trainer: {}\n")
    assert expand_shortcuts(["fit", "--config", "demo"]) == ["fit", "--config", "demo"]


def test_help_lists_the_subcommands_and_the_demo(capsys):
    assert main(["--help"]) == 0  # answered before Lightning is imported (it used to be LightningCLI's page, ~8 s)
    out = capsys.readouterr().out
    assert all(name in out for name in ("fit", "validate", "test", "predict"))
    assert "agg2exp-train demo" in out and "demo, paper" in out
    from agg2exp_lightning.training.help_text import SUBCOMMAND_HELP

    flat = " ".join(out.split())
    assert all(" ".join(text.split()) in flat for text in SUBCOMMAND_HELP.values())  # every sentence whole, none cut


def test_top_level_help_imports_neither_lightning_nor_torch():
    code = ("import sys; from agg2exp_lightning.training import main; main(['--help']); main(['--version']); "
            "print('IMPORTED', sorted(m for m in ('lightning', 'torch', 'monai') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]


def test_subcommand_help_names_our_options(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "--predictions_dir" in out and "NIfTI" in out and "--resume" in out


def test_no_warning_at_start(monkeypatch, capsys):
    """LightningCLI warned at every start because the expanded command line was passed beside sys.argv."""
    monkeypatch.setattr(sys, "argv", ["agg2exp-train", "demo", "--print_config"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            main()
    assert [str(w.message) for w in caught] == []
    assert "ExplanationMonitor" in capsys.readouterr().out


def test_preprocessing_builds_without_monai_future_warning():
    from agg2exp_lightning.data.transforms import preprocessing
    from agg2exp_lightning.labels import load_structure_mapping

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preprocessing(load_structure_mapping(None), 17, (5.0, 5.0, 5.0))
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_without_a_checkpoint_is_refused_by_name(subcommand, tmp_path, capsys):
    rc = main([subcommand, "--config", "demo", f"--trainer.default_root_dir={tmp_path}",
               f"--trainer.logger.init_args.save_dir={tmp_path}", f"--data.data_root={tmp_path / 'none'}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"{subcommand} needs a checkpoint: pass --ckpt_path PATH" in err


def test_unreadable_ckpt_path_is_refused_by_name(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["validate", "--config", "demo", f"--ckpt_path={bad}", f"--trainer.default_root_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"cannot load checkpoint {bad}" in err and "weights_only=True" in err
    bare = tmp_path / "bare.ckpt"
    torch.save({"net.weight": torch.zeros(1)}, bare)
    assert main(["test", "--config", "demo", f"--ckpt_path={bare}"]) == 2
    assert "lacks ['state_dict']" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    from agg2exp_lightning import __version__
    from agg2exp_lightning.training.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"agg2exp-train {__version__}"

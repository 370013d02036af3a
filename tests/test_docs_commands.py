"""The README's and docs' commands as written: every one parses with the command-line parser it names, the
checkpoint names they use are the ones the demo writes, and the published-table audit runs as documented.

Commands are read from the fenced ``bash`` blocks of README.md and docs/*.md (backslash continuations joined,
comments dropped); a command holding a placeholder (``...``, ``[--x ...]``, ``CKPT``) is a synopsis and is skipped.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"\.\.\.|\[--|\bCKPT\b|\bROOT\b|\bDIR\b|/path/to/")


def doc_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every command line in a fenced bash block of the docs."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            variables: dict[str, str] = {}  # NAME="..." lines of the block, substituted into the commands after them
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.split(r"\s+#", line)[0].strip()
                line = re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: variables.get(m.group(1), m.group(0)), line)
                assignment = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line)
                if assignment and len(shlex.split(line)) == 1:  # NAME=value alone, not `NAME=1 command ...`
                    variables[assignment.group(1)] = " ".join(shlex.split(assignment.group(2)))
                    continue
                if line and not line.startswith("#"):
                    out.append((doc.relative_to(ROOT).as_posix(), line))
    return out


def _argv(command: str, names: tuple[str, ...]) -> list[str] | None:
    """The arguments after the program in ``command`` when it runs one of ``names`` (env and time prefixes skipped)."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word in names:
            return words[i + 1 :]
        if word == "python" and i + 1 < len(words) and words[i + 1] in names:
            return words[i + 2 :]
    return None


def _parses(build_parser, argv: list[str], where: str, command: str, capsys) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"{where}: `{command}` does not parse ({err.code}): {capsys.readouterr().err.strip()}")


COMMANDS = [c for c in doc_commands() if not PLACEHOLDER.search(c[1])]


def test_the_docs_hold_commands_of_every_tool():
    tools = " ".join(c for _, c in COMMANDS)
    for tool in ("audit.py", "agg2exp-audit", "agg2exp-train", "train.py", "agg2exp-make-cohort", "agg2exp-compare-methods"):
        assert tool in tools, tool


@pytest.mark.parametrize(("where", "command"), [c for c in COMMANDS if _argv(c[1], ("audit.py", "agg2exp-audit")) is not None])
def test_audit_commands_parse(where, command, capsys):
    from agg2exp_lightning.audit.cli import build_parser

    _parses(build_parser, _argv(command, ("audit.py", "agg2exp-audit")), where, command, capsys)


@pytest.mark.parametrize(("where", "command"), [c for c in COMMANDS if _argv(c[1], ("agg2exp-compare-methods",)) is not None])
def test_compare_methods_commands_parse(where, command, capsys):
    from agg2exp_lightning.evaluation.cli import build_parser

    _parses(build_parser, _argv(command, ("agg2exp-compare-methods",)), where, command, capsys)


@pytest.mark.parametrize(("where", "command"), [c for c in COMMANDS if _argv(c[1], ("agg2exp-make-cohort",)) is not None])
def test_make_cohort_commands_parse(where, command, capsys):
    from agg2exp_lightning.data.synthetic import build_parser

    _parses(build_parser, _argv(command, ("agg2exp-make-cohort",)), where, command, capsys)


TRAIN = [c for c in COMMANDS if _argv(c[1], ("train.py", "agg2exp-train")) is not None and "--print_config" not in c[1]]


@pytest.mark.parametrize(("where", "command"), TRAIN)
def test_train_commands_parse(where, command, capsys):
    """LightningCLI parses and checks the whole command (``--print_config`` stops before anything runs)."""
    from agg2exp_lightning.training.cli import build_cli
    from agg2exp_lightning.training.configs import expand_shortcuts

    argv = expand_shortcuts(_argv(command, ("train.py", "agg2exp-train")))
    with pytest.raises(SystemExit) as exit_:
        build_cli([*argv, "--print_config"])
    assert exit_.value.code in (0, None), f"{where}: `{command}` does not parse: {capsys.readouterr().err.strip()[-500:]}"


def test_checkpoint_names_in_the_docs_are_the_ones_the_demo_writes():
    """The demo's ModelCheckpoint writes best-epoch=NN.ckpt and last.ckpt; a doc naming checkpoints/best.ckpt sends
    a reader to a file that is never there."""
    import yaml

    demo = yaml.safe_load((ROOT / "agg2exp_lightning" / "configs" / "demo.yaml").read_text())
    names = [cb["init_args"].get("filename") for cb in demo["trainer"]["callbacks"] if cb["class_path"].endswith("ModelCheckpoint")]
    assert names == ["best-{epoch:02d}", "last"]
    for doc in DOCS:
        for name in re.findall(r"checkpoints/([\w.*=-]+\.ckpt)", doc.read_text(encoding="utf-8")):
            assert re.fullmatch(r"best-(epoch=\d\d|\*)\.ckpt|last\.ckpt", name), f"{doc.name}: checkpoints/{name}"


def test_scratch_paths_stay_out_of_the_docs():
    for doc in DOCS:
        assert not re.search(r"/tmp/h\d|/tmp/i\d\d", doc.read_text(encoding="utf-8")), doc.name


def test_a_manifest_as_data_root_is_read_not_generated_into(tmp_path):
    """docs/data.md: `python train.py demo --data.data_root manifest.csv` with the demo's synthetic_cohort setting."""
    from agg2exp_lightning.data.datamodule import ThoraxDataModule

    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,label,split\n")
    ThoraxDataModule(str(manifest), spacing=(8, 8, 8), roi_size=(32, 32, 32), synthetic_cohort={"n_subjects": 2, "seed": 0}).prepare_data()
    assert manifest.read_text() == "image,label,split\n" and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]
    missing = tmp_path / "other.csv"  # not there yet: still not a folder to generate into
    ThoraxDataModule(str(missing), spacing=(8, 8, 8), roi_size=(32, 32, 32), synthetic_cohort={"n_subjects": 2, "seed": 0}).prepare_data()
    assert not missing.exists()


@pytest.mark.slow
def test_the_published_table_audit_runs_as_documented(tmp_path, monkeypatch):
    """docs/auditing.md's first command, with only --out moved to a temporary folder."""
    from agg2exp_lightning.audit.cli import main

    (command,) = [c for w, c in COMMANDS if w == "docs/auditing.md" and "--from-table ../shared" in c and "--protocol" not in c]
    argv = _argv(command, ("audit.py",))
    table = ROOT / argv[argv.index("--from-table") + 1]
    if not table.is_file():
        pytest.skip(f"published table not at {table}")
    argv[argv.index("--out") + 1] = str(tmp_path / "audit")
    monkeypatch.chdir(ROOT)
    assert main([*argv, "-q"]) == 0
    assert (tmp_path / "audit" / "report.html").is_file()

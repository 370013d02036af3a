"""Training under faults: SIGKILL at random moments, corrupt or foreign checkpoints, NaN losses and attributions,
read-only or full disks, broken configs. Each case goes through ``train.py`` (a subprocess) or the ``main`` /
``train`` functions it is a thin wrapper of, and checks what a user sees."""
from __future__ import annotations

import errno
import os
import random
import shutil
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from agg2exp_lightning import model as model_module
from agg2exp_lightning import training
from agg2exp_lightning.model import SegmentationModule
from agg2exp_lightning.training import main, train
from agg2exp_lightning.utils.files import TEMPORARY_PATTERN

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "configs"
TINY = (  # tests/conftest.py TINY_MODEL_ARGS (test modules are not importable)
    "--model.feature_size=12",
    "--model.depths=[1, 1, 1, 1]",
    "--model.roi_size=[32, 32, 32]",
    '--model.norm_name=["group", {"num_groups": 3}]',
)


def _args(cohort: Path, run: Path, *extra: str, config: str = "checkpoints_only.yaml") -> list[str]:
    return [
        "demo",
        f"--data.data_root={cohort}",
        "--data.spacing=[8.0, 8.0, 8.0]",
        "--data.roi_size=[32, 32, 32]",
        *TINY,
        f"--trainer.default_root_dir={run}",
        f"--trainer.logger.init_args.save_dir={run}",
        "--config",
        str(CONFIGS / config),
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


#: One torch thread: on a shared 2-core machine two threads per process are several times slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _main(argv: list[str], capsys) -> tuple[int, str]:
    """``train.py``'s main in-process: its exit status and what it wrote to stderr."""
    try:
        rc = main(argv)
    except SystemExit as stop:  # LightningCLI's parser exits by itself
        rc = stop.code
    return rc, capsys.readouterr().err


def _temporaries(folder: Path) -> list[str]:
    """Temporary files of killed atomic writes in ``folder``."""
    return [p.name for p in folder.iterdir() if TEMPORARY_PATTERN.fullmatch(p.name)]


def _step(ckpt: Path) -> int | None:
    return torch.load(ckpt, weights_only=True)["global_step"] if ckpt.is_file() else None


@pytest.fixture(scope="module")
def one_epoch_run(clean_cohort, tmp_path_factory) -> Path:
    """A run folder after one epoch of two steps (checkpoints/last.ckpt), made once per module.
    (``limit_train_batches=1`` would mean all batches: LightningCLI parses it as the float 1.0.)"""
    run = tmp_path_factory.mktemp("one_epoch") / "run"
    train(_args(clean_cohort, run, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                "--trainer.check_val_every_n_epoch=5"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


# -- 1. SIGKILL at random moments, then the same command ------------------------------------------------------

#: ``python -c HARNESS MODE VALUE ARGS...`` runs train.py's main and SIGKILLs itself: at this process's
#: VALUE-th training step (before it runs), VALUE seconds after its first step, or halfway through writing
#: its first checkpoint (whichever writer is used: a file object, or fsspec's as Lightning's default does).
HARNESS = r"""
import io, os, signal, sys, threading
import torch
from agg2exp_lightning import model as M
mode, value = sys.argv[1], float(sys.argv[2])
def die():
    os.kill(os.getpid(), signal.SIGKILL)
calls = [0]
real_step = M.SegmentationModule.training_step
def step(self, batch, batch_idx):
    calls[0] += 1
    if mode == "step" and calls[0] == int(value):
        die()
    if mode == "delay" and calls[0] == 1:
        threading.Timer(value, die).start()
    return real_step(self, batch, batch_idx)
M.SegmentationModule.training_step = step
if mode == "save":
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and "loops" in obj and not isinstance(f, io.BytesIO):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            die()
        return real_save(obj, f, *a, **k)
    torch.save = save
    from fsspec.implementations.local import LocalFileOpener
    real_write = LocalFileOpener.write
    def write(self, data, *a, **k):
        real_write(self, data[: len(data) // 2])
        self.f.flush()
        die()
    LocalFileOpener.write = write
from agg2exp_lightning.training import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_ends_exactly_as_an_uninterrupted_run(clean_cohort, tmp_path, run_cli):
    rng = random.Random(20250607)
    extra = ("--trainer.max_epochs=3", "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=2")
    ref = run_cli("train.py", *_args(clean_cohort, tmp_path / "ref", *extra), env=ONE_THREAD)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "run"
    cmd = _args(clean_cohort, run, *extra)
    last = run / "checkpoints" / "last.ckpt"
    landed = []
    # a fresh run killed before a seeded random step (counted from launch, so the kill always lands: a
    # wall-clock delay from launch may find a quiet machine's run already finished), then mid-epoch (before
    # the second step of the epoch it resumed at), mid-write of a checkpoint, and at a random moment
    for mode, value in (("step", rng.randint(2, 4)), ("step", 2), ("save", 1), ("delay", round(rng.uniform(0.5, 6.0), 2))):
        proc = run_cli("-c", HARNESS, mode, str(value), *cmd, env=ONE_THREAD)
        if mode != "delay":  # a late random kill may find the run finished
            assert proc.returncode == -signal.SIGKILL, (mode, proc.returncode, proc.stderr[-3000:])
        if mode == "save":  # killed halfway through a write: the partial file is beside, last.ckpt intact
            assert _temporaries(run / "checkpoints"), sorted(os.listdir(run / "checkpoints"))
        if last.is_file():
            torch.load(last, weights_only=True)  # never truncated
        landed.append((mode, value, proc.returncode, _step(last)))
    done = run_cli("train.py", *cmd, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    print("kills landed (global step of last.ckpt after each):", landed)
    assert not _temporaries(run / "checkpoints")  # left-overs of killed writes are cleaned up
    want = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(last, weights_only=True)
    assert (got["global_step"], got["epoch"]) == (want["global_step"], want["epoch"]) == (6, 2)
    assert got["state_dict"].keys() == want["state_dict"].keys()
    different = [k for k in want["state_dict"] if not torch.equal(got["state_dict"][k], want["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    for (a, b) in zip(got["optimizer_states"][0]["state"].values(), want["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_resumed_epoch_repeats_the_uninterrupted_one_in_process(clean_cohort, tmp_path, monkeypatch):
    """Fast twin of the SIGKILL test: a run dies in the middle of its second epoch (an exception in place of
    the kill), the same call again resumes from the end of the first; it ends as a run never stopped."""
    extra = ("--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=5")
    train(_args(clean_cohort, tmp_path / "ref", *extra))
    run = tmp_path / "run"
    real_step = SegmentationModule.training_step

    def dying_step(self, batch, batch_idx):
        if self.global_step == 3:  # second batch of the second epoch
            raise RuntimeError("killed")
        return real_step(self, batch, batch_idx)

    with monkeypatch.context() as patch:
        patch.setattr(SegmentationModule, "training_step", dying_step)
        with pytest.raises(RuntimeError, match="killed"):
            train(_args(clean_cohort, run, *extra))
    assert _step(run / "checkpoints" / "last.ckpt") == 2
    torch.manual_seed(12345)  # whatever happened in between must not matter
    out = train(_args(clean_cohort, run, *extra))
    assert out["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    want = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["global_step"] == want["global_step"] == 4
    assert all(torch.equal(got["state_dict"][k], v) for k, v in want["state_dict"].items())


def test_truncated_last_checkpoint_gives_a_clear_error(one_epoch_run, clean_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    rc, err = _main(_args(clean_cohort, run, "--trainer.max_epochs=2"), capsys)
    assert rc == 2
    assert f"cannot resume from checkpoint {last}" in err and "truncated or corrupt" in err and "--resume never" in err
    assert "Traceback" not in err


class _Marker:
    """Unpickling it creates a file: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_malicious_last_checkpoint_is_never_unpickled(one_epoch_run, clean_cohort, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    last = run / "checkpoints" / "last.ckpt"
    marker = tmp_path / "pwned"
    ckpt = torch.load(last, weights_only=True)
    ckpt["hyper_parameters"]["evil"] = _Marker(marker)
    torch.save(ckpt, last)
    rc, err = _main(_args(clean_cohort, run, "--trainer.max_epochs=2"), capsys)
    assert rc == 2 and f"cannot resume from checkpoint {last}" in err and "weights_only=True" in err
    assert not marker.exists()
    # without the up-front check, Lightning itself loads with weights_only=True: it refuses, runs nothing
    monkeypatch.setattr(training.run, "check_resume_checkpoint", lambda path, model: None)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        train(_args(clean_cohort, run, "--trainer.max_epochs=2"))
    assert not marker.exists()
    torch.load(last, weights_only=False)  # the positive control: a plain load would have run it
    assert marker.exists()


def test_checkpoint_of_another_model_or_a_bare_state_dict_is_refused(one_epoch_run, clean_cohort, tmp_path, capsys,
                                                                     tiny_checkpoint):
    ckpt = torch.load(one_epoch_run / "checkpoints" / "last.ckpt", weights_only=True)
    torch.manual_seed(0)
    wider = SegmentationModule(feature_size=24, depths=(1, 1, 1, 1), roi_size=(32, 32, 32),
                               norm_name=("group", {"num_groups": 3}))
    ckpt["state_dict"] = wider.state_dict()
    ckpt["hyper_parameters"]["feature_size"] = 24
    other = tmp_path / "wider.ckpt"
    torch.save(ckpt, other)
    bare = tmp_path / "bare.pt"
    torch.save(wider.state_dict(), bare)
    run = tmp_path / "run"
    rc, err = _main(_args(clean_cohort, run, f"--resume={other}"), capsys)
    assert rc == 2 and f"cannot resume from checkpoint {other}" in err
    assert "feature_size=24 in the checkpoint, 12 configured" in err and "Traceback" not in err
    for path in (bare, tiny_checkpoint):  # a state_dict; a weights-only checkpoint without optimiser and loops
        rc, err = _main(_args(clean_cohort, run, f"--resume={path}"), capsys)
        assert rc == 2 and f"cannot resume from checkpoint {path}" in err and "lacks" in err and "optimizer_states" in err
    assert not (run / "checkpoints" / "last.ckpt").exists()


# -- 2. non-finite losses and attributions --------------------------------------------------------------------

class _NaNGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: finite logits, non-finite attributions."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _Faulty(nn.Module):
    """Wraps the network: NaN logits at the listed training calls (1-based); finite logits with NaN gradients at
    the listed ``nan_grad_train_calls``; NaN gradients in eval mode."""

    def __init__(self, net: nn.Module, nan_train_calls=(), nan_grad_in_eval: bool = False, nan_grad_train_calls=()) -> None:
        super().__init__()
        self.inner, self.nan_train_calls, self.nan_grad_in_eval = net, set(nan_train_calls), nan_grad_in_eval
        self.nan_grad_train_calls = set(nan_grad_train_calls)
        self.train_calls = 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.train_calls += 1
            if self.train_calls in self.nan_train_calls:
                out = out * float("nan")
            if self.train_calls in self.nan_grad_train_calls:
                out = _NaNGrad.apply(out)
        elif self.nan_grad_in_eval:
            out = _NaNGrad.apply(out)
        return out


def _faulty_builder(monkeypatch, **kwargs) -> None:
    real = model_module.build_swin_unetr
    monkeypatch.setattr(model_module, "build_swin_unetr", lambda *a, **k: _Faulty(real(*a, **k), **kwargs))


def _csv_metrics(run: Path):
    import pandas as pd

    files = sorted(run.rglob("metrics.csv"))
    assert files, sorted(str(p) for p in run.rglob("*"))
    return pd.read_csv(files[-1])


CSV_LOGGER = ("--trainer.logger=lightning.pytorch.loggers.CSVLogger",)


def test_nan_loss_steps_are_skipped_counted_logged_and_the_run_finishes(clean_cohort, tmp_path, monkeypatch, caplog):
    _faulty_builder(monkeypatch, nan_train_calls=(2, 4))
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        out = train(_args(clean_cohort, run, *CSV_LOGGER, "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
                          "--trainer.check_val_every_n_epoch=5"))
    assert out["nonfinite_loss_steps"] == 2
    warned = [r.getMessage() for r in caplog.records if "non-finite training loss" in r.getMessage()]
    assert len(warned) == 2 and "batch 1" in warned[0] and "batch 3" in warned[1], warned
    assert any("2 training step(s) had a non-finite loss" in r.getMessage() for r in caplog.records)
    metrics = _csv_metrics(run)
    assert metrics["train/nonfinite_loss_steps"].dropna().tolist() == [2.0]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["nonfinite_loss_steps"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert (run / "dice_table.md").is_file()


def test_nonfinite_gradients_of_a_finite_loss_skip_the_update_and_keep_the_weights_finite(clean_cohort, tmp_path, monkeypatch, caplog):
    """A finite loss whose gradients are NaN (as a reduced-precision overflow gives) must not poison the weights."""
    _faulty_builder(monkeypatch, nan_grad_train_calls=(2,))
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        out = train(_args(clean_cohort, run, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                          "--trainer.check_val_every_n_epoch=5"))
    assert out["nonfinite_loss_steps"] == 1
    assert [r.getMessage() for r in caplog.records if "non-finite gradients at global step 1" in r.getMessage()]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not [r for r in caplog.records if "non-finite training loss" in r.getMessage()]  # step 3's loss stayed finite


@pytest.mark.slow
def test_nonfinite_attributions_are_reported_and_training_goes_on(clean_cohort, tmp_path, monkeypatch, caplog):
    _faulty_builder(monkeypatch, nan_grad_in_eval=True)
    run = tmp_path / "run"
    with caplog.at_level("WARNING"):
        out = train(_args(clean_cohort, run, *CSV_LOGGER, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                          "--trainer.check_val_every_n_epoch=1", config="explanation_monitor_only.yaml"))
    assert _step(run / "checkpoints" / "last.ckpt") == 2 and (run / "dice_table.md").is_file()
    assert out["nonfinite_loss_steps"] == 0
    # checks: epoch 0's validation, training end, the final validation of train(): each reports and goes on
    left_out = [r.getMessage() for r in caplog.records if "ExplanationMonitor: scan" in r.getMessage()]
    assert len(left_out) == 3 and all("Expected argument `attributions` to be finite" in m for m in left_out), left_out
    assert "ExplanationMonitor: scan s0003 left out at epoch 0" in left_out[0]
    assert any("no scan explained at epoch 0: 1 non-finite (s0003)" in r.getMessage() for r in caplog.records)
    # logged at epoch 0's validation and at training end; the final validation of the best checkpoint reports in the
    # log (above) but runs with the loggers detached (no extra point after the last epoch, issue 27)
    assert metrics_have(run, "agg2exp/scans_nonfinite", [1.0, 1.0])


def metrics_have(run: Path, key: str, values: list[float]) -> bool:
    metrics = _csv_metrics(run)
    assert key in metrics, list(metrics.columns)
    assert metrics[key].dropna().tolist() == values, metrics[key].dropna().tolist()
    return True


# -- 3. read-only or full disks -------------------------------------------------------------------------------

def _fail_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """Make creating folders and opening files for writing under ``folder`` fail like a read-only disk."""
    real_mkdir, real_open = os.mkdir, os.open
    inside = lambda p: str(os.fspath(p)).startswith(str(folder))  # noqa: E731
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def mkdir(path, *a, **k):
        if inside(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *a, **k)

    def open_(path, flags, *a, **k):
        if inside(path) and flags & writes:
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_read_only_run_folder_gives_a_clear_error_naming_it(clean_cohort, tmp_path, capsys, monkeypatch):
    run = tmp_path / "mount" / "run"
    _fail_writes_under(monkeypatch, tmp_path / "mount", errno.EROFS)
    rc, err = _main(_args(clean_cohort, run, "--trainer.max_epochs=1"), capsys)
    assert rc == 2, err[-2000:]
    assert f"cannot write {tmp_path / 'mount'}: Read-only file system [EROFS]" in err  # the logger's folder, first
    assert "Traceback" not in err
    rc, err = _main(_args(clean_cohort, run, "--trainer.max_epochs=1", "--trainer.logger=false"), capsys)
    assert rc == 2, err[-2000:]
    assert f"the run folder (--trainer.default_root_dir) {run} is not writable: Read-only file system [EROFS]" in err
    assert "Traceback" not in err


def test_disk_full_while_writing_a_checkpoint_gives_a_clear_error(clean_cohort, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up after the start: the first checkpoint cannot be flushed
        if ".last.ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, err = _main(_args(clean_cohort, run, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                          "--trainer.check_val_every_n_epoch=5"), capsys)
    assert rc == 2, err[-2000:]
    assert "training stopped by a file-system error: No space left on device [ENOSPC]" in err
    assert f"run folder {run}" in err and "none was completed" in err and "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == []  # no truncated or partial file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_run_folder_without_write_permission_gives_a_clear_error(clean_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        rc, err = _main(_args(clean_cohort, run, "--trainer.max_epochs=1"), capsys)
    finally:
        run.chmod(0o700)
    assert rc == 2 and f"{run} is not writable: Permission denied" in err and "Traceback" not in err


# -- 4. broken configurations ---------------------------------------------------------------------------------

CONFIG_CASES = {
    "string_for_int": ("model:\n  feature_size: big\n", ["model.feature_size", "Expected a <class 'int'>", "big"]),
    "float_for_int": ("trainer:\n  max_epochs: -1.5\n", ["trainer.max_epochs", "<class 'int'>", "-1.5"]),
    "negative_epochs": ("trainer:\n  max_epochs: -5\n", ["invalid configuration", "max_epochs", "non-negative integer or -1"]),
    "bad_feature_size": ("model:\n  feature_size: 10\n", ["invalid configuration", "`feature_size`", "positive multiple of 12"]),
    "zero_batch": ("data:\n  batch_size: 0\n", ["invalid configuration", "`batch_size`", "positive integer"]),
    "unknown_top_level_key": ("modle:\n  lr: 0.1\n", ["modle.lr", "does not accept option"]),  # LightningCLI subcommand fit
    "unknown_nested_key": ("model:\n  feature_sise: 12\n", ["feature_sise"]),
    "not_a_mapping": ("- 1\n- 2\n", ["{path}", "expected a YAML mapping of sections", "holds a list"]),
    "not_yaml": ("model: [1, 2\n", ["config file {path} cannot be read as YAML", "line"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_broken_config_gives_a_clear_error(case, clean_cohort, tmp_path, capsys):
    text, expected = CONFIG_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    rc, err = _main([*_args(clean_cohort, tmp_path / "run"), "--config", str(path)], capsys)
    assert rc == 2, err[-2000:]
    for piece in expected:
        assert piece.format(path=path) in err, (piece, err[-1500:])
    assert "Traceback" not in err


def test_missing_config_file_is_named(clean_cohort, tmp_path, capsys):
    missing = tmp_path / "nothere.yaml"
    rc, err = _main([*_args(clean_cohort, tmp_path / "run"), "--config", str(missing)], capsys)
    assert rc == 2 and f"config file {missing} (argument --config) does not exist" in err and "Traceback" not in err


def test_config_refused_by_the_model_through_train_py(clean_cohort, tmp_path, run_cli):
    """End to end: what used to be a traceback from inside the model's constructor is one line, exit status 2."""
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  feature_size: 10\n")
    proc = run_cli("train.py", *_args(clean_cohort, tmp_path / "run"), "--config", str(path), env=ONE_THREAD)
    assert proc.returncode == 2
    assert "error: invalid configuration: Expected argument `feature_size` to be a positive multiple of 12, but got 10" in proc.stderr
    assert "Traceback" not in proc.stderr

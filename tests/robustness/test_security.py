"""Security of the audit and comparison commands: nothing unpickles, data strings stay data, no network.

Each case goes through a public command (``audit.py``, ``agg2exp-compare-methods``, ``train.py``) as a
user would run it, and checks the exit status, the message and the files left behind.
"""
from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from agg2exp_lightning.audit.cli import main as audit_main
from agg2exp_lightning.evaluation.cli import main as compare_main

HOSTILE_IDS = ("../../x", "/etc/passwd", "a/b", "<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "..", ".hidden")
HOSTILE_VALUES = ("<script>alert(3)</script>", "<img src=x onerror=alert(4)>", "../../y", "/etc/passwd")
FAST_AUDIT = ("--method", "vg", "--spacing", "12", "12", "12", "-q")


class _Marker:
    """Unpickling this creates the file ``path`` (what a malicious pickle would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {}, "callbacks": _Marker(marker)}, path)
    return path


def _synthetic_frame():
    """:func:`synthetic_frame` of tests/conftest.py (a table in the published format)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_audit_conftest", Path(__file__).parents[1] / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic_frame


def _tree(root: Path, skip: Path) -> dict[str, int | None]:
    """Every path under ``root`` (except ``skip`` and what it holds) with its modification time (files)."""
    return {str(p): p.stat().st_mtime_ns if p.is_file() else None for p in root.rglob("*") if skip not in p.parents and p != skip}


def _no_markup_from_data(page: str, *, shown: bool = True) -> None:
    """No script, no event handler and no image but the embedded figures: the hostile strings are text."""
    from html.parser import HTMLParser

    found: list[tuple[str, list]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Tags().feed(page)
    assert "script" not in {t for t, _ in found}
    assert not [a for _, attrs in found for a, _ in attrs if a.startswith("on")]
    assert all(dict(attrs)["src"].startswith("data:image/png;base64,") for t, attrs in found if t == "img")
    assert "<script" not in page.lower() and "<img src=x" not in page
    if shown:
        assert "&lt;script&gt;alert(" in page  # the hostile strings reached the page, as text


# -- 1. malicious checkpoints ---------------------------------------------------------------------


def test_the_malicious_checkpoint_really_runs_code_when_unpickled(tmp_path):
    """Control: the file the next test feeds to the commands creates its marker when unpickled naively."""
    marker = tmp_path / "PWNED"
    ckpt = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("command", ["audit.py", "agg2exp-compare-methods"])
def test_malicious_checkpoint_is_refused_and_never_unpickled(command, clean_cohort, tmp_path, run_cli):
    marker = tmp_path / "PWNED"
    ckpt = _malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    if command == "audit.py":
        proc = run_cli("audit.py", "--checkpoint", str(ckpt), "--data", str(clean_cohort), "--out", str(tmp_path / "out"), *FAST_AUDIT)
    else:
        proc = run_cli("-m", "agg2exp_lightning.evaluation.cli", "--checkpoint", str(ckpt), "--data", str(clean_cohort),
                       "--out", str(tmp_path / "out"), "--methods", "vanilla_gradient", "--quiet")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(ckpt) in proc.stderr and "weights_only" in proc.stderr and "never unpickled" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


# -- 2. checkpoints of other models, and files that are no checkpoint ------------------------------


def _write_other_checkpoint(kind: str, path: Path) -> str:
    """Write a checkpoint of kind ``kind``; returns a phrase the error message must contain."""
    from monai.networks.nets import UNet

    from agg2exp_lightning.model import SegmentationModule

    tiny = dict(depths=(1, 1, 1, 1), roi_size=(32, 32, 32), norm_name=("group", {"num_groups": 3}))
    if kind == "unet_state_dict":
        torch.save(UNet(3, 1, 17, (4, 8), (2,)).state_dict(), path)
        return "expected a Lightning checkpoint with 'state_dict' and 'hyper_parameters'"
    if kind == "unet_lightning":
        torch.save({"state_dict": UNet(3, 1, 17, (4, 8), (2,)).state_dict(), "hyper_parameters": {"lr": 1e-3}}, path)
        return "expected the weights of the Swin-UNETR SegmentationModule"
    if kind == "five_classes":
        m = SegmentationModule(num_classes=5, feature_size=12, **tiny)
        torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
        return "expected a model with num_classes=17"
    if kind == "two_channels":
        m = SegmentationModule(in_channels=2, feature_size=12, **tiny)
        torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
        return "expected a model with in_channels=1"
    if kind == "weights_of_another_feature_size":
        m = SegmentationModule(feature_size=24, **tiny)
        torch.save({"state_dict": m.state_dict(), "hyper_parameters": {**dict(m.hparams), "feature_size": 12}}, path)
        return "shapes differ: net."
    if kind == "text_file":
        path.write_text("not a checkpoint\n")
        return "cannot be loaded with weights_only=True"
    if kind == "empty_file":
        path.write_bytes(b"")
        return "cannot be loaded with weights_only=True"
    if kind == "truncated":
        m = SegmentationModule(feature_size=12, **tiny)
        torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
        path.write_bytes(path.read_bytes()[:5000])
        return "cannot be loaded with weights_only=True"
    if kind == "missing":
        return "does not exist"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["unet_state_dict", "unet_lightning", "five_classes", "two_channels",
                                  "weights_of_another_feature_size", "text_file", "empty_file", "truncated", "missing"])
def test_checkpoint_of_another_model_is_refused_naming_the_file(kind, clean_cohort, tmp_path, capsys):
    ckpt = tmp_path / f"{kind}.ckpt"
    expected = _write_other_checkpoint(kind, ckpt)
    rc = audit_main(["--checkpoint", str(ckpt), "--data", str(clean_cohort), "--out", str(tmp_path / "out"), *FAST_AUDIT])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("agg2exp-audit: error: checkpoint ") and str(ckpt) in err and expected in err, err
    assert not (tmp_path / "out").exists()  # refused before anything is written


# -- caches read back on resume ---------------------------------------------------------------------


def _meta_with_test_split(root: Path, test_ids: set[str], replace: dict[str, str] | None = None) -> None:
    """Put ``test_ids`` in the test split of ``root/meta.csv`` and fill its other columns from ``replace``."""
    path = root / "meta.csv"
    rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines(), delimiter=";"))
    head = rows[0]
    for row in rows[1:]:
        row[head.index("split")] = "test" if row[0] in test_ids else "train"
        for col, value in (replace or {}).items():
            row[head.index(col)] = value
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter=";").writerows(rows)


@pytest.mark.slow
def test_tampered_and_partial_caches_are_recomputed_never_unpickled(cohort_copy, tmp_path, caplog):
    """A resumed audit reads its per-scan records as JSON and slices as pickle-free .npz: a truncated
    record, a record of another scan, an object-array (pickle) .npz and a leftover temporary file are
    reported and the scans explained again, with the same results as before."""
    _meta_with_test_split(cohort_copy, {"s0006", "s0007"})
    out = tmp_path / "out"
    argv = ["--checkpoint", None, "--data", str(cohort_copy), "--out", str(out), *FAST_AUDIT]
    from agg2exp_lightning.model import SegmentationModule

    torch.manual_seed(0)
    m = SegmentationModule(feature_size=12, depths=(1, 1, 1, 1), roi_size=(32, 32, 32), norm_name=("group", {"num_groups": 3}))
    argv[1] = str(tmp_path / "tiny.ckpt")
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, argv[1])
    assert audit_main(argv) == 0
    scans = out / "scans"
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    per_scan = (out / "per_scan.csv").read_bytes()
    assert {"s0006.json", "s0007.json", "s0006.slices.npz", "s0007.slices.npz"} <= set(before)

    marker = tmp_path / "PWNED"
    (scans / "s0006.json").write_bytes(before["s0006.json"][: len(before["s0006.json"]) // 2])  # truncated
    obj = np.empty(2, dtype=object)
    obj[0] = _Marker(marker)
    np.savez(scans / "s0007.slices.npz", index=obj, image=obj, prediction=obj, attribution=obj)  # needs unpickling
    with pytest.raises(ValueError):  # control: numpy refuses it without allow_pickle ...
        np.load(scans / "s0007.slices.npz")["index"]
    np.load(scans / "s0007.slices.npz", allow_pickle=True)["index"]
    assert marker.exists()  # ... and it does run code when unpickled
    marker.unlink()
    leftover = scans / ".s0007.json.4242.deadbeef.tmp"
    leftover.write_text('{"id": "s0007", "classes": [')  # a write killed before its rename

    caplog.set_level("WARNING")
    assert audit_main(argv) == 0
    assert not marker.exists()
    warned = caplog.text
    assert "s0006.json is not readable JSON" in warned and "scan s0006 is explained again" in warned
    assert "s0007.slices.npz is not a readable slice bundle" in warned and "scan s0007 is explained again" in warned
    assert not leftover.exists()
    after = {p.name: p.read_bytes() for p in scans.iterdir()}
    assert after["s0006.json"] == before["s0006.json"] and after["s0007.json"] == before["s0007.json"]
    with np.load(scans / "s0007.slices.npz", allow_pickle=False) as data:
        assert data["image"].dtype == np.float16
    assert (out / "per_scan.csv").read_bytes() == per_scan

    # a well-formed record of another scan under this scan's name is not trusted either
    (scans / "s0006.json").write_bytes(before["s0007.json"])
    caplog.clear()
    assert audit_main(argv) == 0
    assert "expected the record of scan 's0006', got one of 's0007'" in caplog.text
    assert (scans / "s0006.json").read_bytes() == before["s0006.json"]


def test_unreadable_audit_manifest_is_refused_clearly(tmp_path, capsys):
    import pandas as pd

    table = tmp_path / "t.csv"
    _synthetic_frame()(20).to_csv(table, index=False)
    out = tmp_path / "out"
    assert audit_main(["--from-table", str(table), "--out", str(out), "-q"]) == 0
    summary = (out / "summary.json").read_bytes()
    (out / "audit.json").write_bytes(b"\xff\xfe\x00garbage")
    capsys.readouterr()
    assert audit_main(["--from-table", str(table), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"output folder {out}: its audit.json is not the JSON an audit writes" in err and "--overwrite" in err
    assert (out / "summary.json").read_bytes() == summary
    assert len(pd.read_csv(out / "per_scan.csv")) == 20


def test_comparison_with_a_damaged_settings_file_is_refused_clearly(clean_cohort, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "settings.json").write_text('{"n_runs": 100, "finger')
    rc = compare_main(["--checkpoint", str(tiny_checkpoint), "--data", str(clean_cohort), "--out", str(out),
                       "--methods", "vanilla_gradient", "--spacing", "12", "12", "12", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"`out_dir` {out}: its settings.json is not the JSON a comparison writes" in err and "Traceback" not in err


# -- 3. ids and metadata that look like paths or markup ----------------------------------------------


def test_hostile_ids_and_metadata_in_a_table_stay_inside_out_and_escaped(tmp_path, monkeypatch):
    frame = _synthetic_frame()(30, 4)
    frame.loc[: len(HOSTILE_IDS) - 1, "patient"] = list(HOSTILE_IDS)
    frame["scanner"] = [HOSTILE_VALUES[i % 2] for i in range(len(frame))]  # a bias-tested column
    frame = frame.rename(columns={"sex": "<b onmouseover=alert(5)>sex</b>"})
    meta = frame[["patient", "age"]].rename(columns={"age": "site"}).assign(site=[HOSTILE_VALUES[2 + i % 2] for i in range(len(frame))])
    frame = frame.drop(columns=["age"])
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    frame.to_csv(tmp_path / "table.csv", index=False)
    meta.to_csv(tmp_path / "meta.csv", index=False)
    monkeypatch.chdir(work)
    out = work / "out"
    before = _tree(tmp_path, out)
    passwd = os.stat("/etc/passwd").st_mtime_ns
    rc = audit_main(["--from-table", str(tmp_path / "table.csv"), "--metadata", str(tmp_path / "meta.csv"), "--out", str(out), "-q"])
    assert rc == 0
    assert _tree(tmp_path, out) == before and os.stat("/etc/passwd").st_mtime_ns == passwd
    assert not Path("/x").exists() and not (tmp_path / "x").exists()
    page = (out / "report.html").read_text()
    _no_markup_from_data(page)
    assert "&lt;img src=x onerror=alert(2)&gt;" in page or "&lt;img src=x onerror=alert(4)&gt;" in page
    summary = json.loads((out / "summary.json").read_text())
    assert {b["column"] for b in summary["bias_tests"]} & {"scanner", "site"}  # the hostile values were tested


@pytest.mark.slow
def test_hostile_ids_and_metadata_through_checkpoint_audits_stay_inside_out_and_escaped(cohort_copy, tiny_checkpoint, tmp_path, run_cli):
    """Ids from a manifest's image_id column and metadata from a manifest and from meta.csv."""
    ids = HOSTILE_IDS[:4]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "image_id", "split", "scanner", "note"])
        for i, sid in enumerate(ids):
            w.writerow([str(cohort_copy / f"s000{i}" / "ct.nii.gz"), sid, "test", HOSTILE_VALUES[i % 2], HOSTILE_VALUES[2 + i % 2]])
    _meta_with_test_split(cohort_copy, {"s0006", "s0007"}, replace={"scanner_model": HOSTILE_VALUES[0], "institute": HOSTILE_VALUES[1],
                                                                    "manufacturer": HOSTILE_VALUES[2], "study_type": HOSTILE_VALUES[3]})
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    passwd = os.stat("/etc/passwd").st_mtime_ns
    for name, source in (("manifest", ["--manifest", str(manifest)]), ("meta", ["--data", str(cohort_copy)])):
        out = work / f"out_{name}"
        before = _tree(tmp_path, out)
        proc = run_cli("audit.py", "--checkpoint", str(tiny_checkpoint), *source, "--split", "test", "--out", str(out), *FAST_AUDIT, cwd=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _tree(tmp_path, out) == before
        # meta.csv gives every scan the same values: no bias test, so they reach the tables, not the page
        _no_markup_from_data((out / "report.html").read_text(), shown=name == "manifest")
        assert HOSTILE_VALUES[0] in (out / "per_scan.csv").read_text()
        names = sorted(p.name for p in (out / "scans").iterdir())
        assert all(not n.startswith(".") for n in names)
        assert len([n for n in names if n.endswith(".json")]) == (len(ids) if name == "manifest" else 2)
    assert os.stat("/etc/passwd").st_mtime_ns == passwd and not Path("/x").exists()
    assert json.loads((work / "out_manifest" / "failed_scans.json").read_text()) == {}


# -- 4. no network ----------------------------------------------------------------------------------

_SITECUSTOMIZE = '''
"""Test harness: record and refuse every connection that is neither loopback nor a Unix socket."""
import ipaddress, json, os, socket

_LOG = os.environ["NETWORK_ATTEMPTS_LOG"]
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _local(host):
    if host is None or host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(kind, address):
    with open(_LOG, "a") as f:
        f.write(json.dumps({"kind": kind, "address": repr(address), "pid": os.getpid()}) + "\\n")
    raise ConnectionRefusedError(f"network access refused by the test harness: {kind} {address!r}")


def _guard(kind, original):
    def checked(self, address, *args, **kwargs):
        if self.family != getattr(socket, "AF_UNIX", None) and isinstance(address, tuple) and not _local(address[0]):
            _record(kind, address)
        return original(self, address, *args, **kwargs)
    return checked


socket.socket.connect = _guard("connect", socket.socket.connect)
socket.socket.connect_ex = _guard("connect_ex", socket.socket.connect_ex)
_create_connection = socket.create_connection


def create_connection(address, *args, **kwargs):
    if not _local(address[0]):
        _record("create_connection", address)
    return _create_connection(address, *args, **kwargs)


socket.create_connection = create_connection
_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if not _local(host if not isinstance(host, bytes) else host.decode()):
        _record("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
'''


@pytest.fixture
def no_network(tmp_path):
    """Environment for a subprocess in which non-local connections (and name look-ups) are recorded and refused."""
    site = tmp_path / "netguard"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(_SITECUSTOMIZE))
    log = tmp_path / "network_attempts.jsonl"
    log.touch()
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "NETWORK_ATTEMPTS_LOG": str(log)}
    return env, log


def test_network_guard_records_attempts(no_network, run_cli, tmp_path):
    """Control: the guard catches a real attempt (so an empty log below means none was made)."""
    env, log = no_network
    code = ("import socket\n"
            "for f in (lambda: socket.create_connection(('192.0.2.1', 80), timeout=1),\n"
            "          lambda: socket.socket().connect(('198.51.100.7', 443)),\n"
            "          lambda: socket.getaddrinfo('example.com', 443)):\n"
            "    try: f()\n"
            "    except ConnectionRefusedError: pass\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); c = socket.create_connection(s.getsockname()); c.close()\n")
    proc = run_cli("-c", code, env=env)
    assert proc.returncode == 0, proc.stderr
    kinds = [json.loads(line)["kind"] for line in log.read_text().splitlines()]
    assert kinds == ["create_connection", "connect", "getaddrinfo"]


@pytest.mark.slow
def test_audit_and_training_open_no_network_connection(no_network, clean_cohort, tiny_checkpoint, tmp_path, run_cli):
    env, log = no_network
    table = tmp_path / "t.csv"
    _synthetic_frame()(20).to_csv(table, index=False)
    runs = {
        "table audit": run_cli("audit.py", "--from-table", str(table), "--out", str(tmp_path / "a1"), "-q", env=env),
        "checkpoint audit": run_cli("audit.py", "--checkpoint", str(tiny_checkpoint), "--data", str(clean_cohort), "--split", "test",
                                    "--out", str(tmp_path / "a2"), *FAST_AUDIT, env=env),
        "training, W&B offline": run_cli(
            "train.py", "demo", "--config", str(Path(__file__).parents[1] / "configs" / "checkpoints_only.yaml"),
            f"--data.data_root={clean_cohort}", "--data.spacing=[8.0, 8.0, 8.0]", "--data.roi_size=[32, 32, 32]",
            "--data.num_workers=0", "--model.feature_size=12", "--model.depths=[1, 1, 1, 1]", "--model.roi_size=[32, 32, 32]",
            '--model.norm_name=["group", {"num_groups": 3}]', f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}", "--trainer.fast_dev_run=true",
            env={**env, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb")}),
    }
    for name, proc in runs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    assert log.read_text() == "", log.read_text()

"""Read an offline W&B run back from its ``run-*.wandb`` file, without uploading it.

An offline run (``WANDB_MODE=offline``, this toolkit's default) keeps everything it logged in one
transaction log until ``wandb sync`` uploads it. wandb >= 0.2x no longer ships a Python reader of that
log; this one follows its framing (LevelDB's log format: a 7-byte file header, then 32 KiB blocks of
records, each with a 7-byte header of crc32, length and type full/first/middle/last) and decodes the
protobuf ``Record``s with wandb's own message classes. The tests use it to check what a run holds
(history keys, summary, config, artifact manifests); a user can check an offline run the same way.

Example:
    >>> run = read_offline_run(next(Path("runs/wandb").glob("offline-run-*/run-*.wandb")))  # doctest: +SKIP
    >>> run["summary"]["val/mean_dice_fg"]  # doctest: +SKIP
    {'max': 0.91}
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

__all__ = ["find_offline_runs", "offline_run_is_empty", "read_offline_run"]

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _raw_records(path: str | Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"Expected a W&B run file (starting with ':W&B'), but {path} is not one")
    out, pos, parts = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            parts = chunk
        elif kind == _MIDDLE:
            parts += chunk
        elif kind == _LAST:
            out.append(parts + chunk)
            parts = b""
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left - _HEADER
    return out


def find_offline_runs(folder: str | Path) -> list[Path]:
    """The ``run-*.wandb`` files of the offline runs under ``folder``, oldest first."""
    return sorted(Path(folder).rglob("offline-run-*/run-*.wandb"))


def offline_run_is_empty(folder: str | Path) -> bool:
    """Whether the transaction log of the offline run ``folder`` (``offline-run-<time>-<id>``) holds no record.

    True only when the folder has a ``run-*.wandb`` transaction log and every one holds no record at all (not
    even the run's own): what a run killed before wandb's first flush leaves (the 7-byte file header; wandb
    writes the log every 15 s, ``x_transaction_log_flush_interval``). A log that cannot be read as one, or
    holds any record, is not empty: the caller keeps it.
    """
    logs = sorted(Path(folder).glob("run-*.wandb"))
    try:
        return bool(logs) and all(not _raw_records(path) for path in logs)
    except (OSError, ValueError):
        return False


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """What an offline run logged.

    Args:
        path: its ``run-<id>.wandb`` file.

    Returns:
        ``{"history": [row dicts], "summary": {key: value}, "config": {key: value}, "artifacts": [{"name",
        "type", "metadata", "files"}], "metrics": [{"name", "step_metric", "summary"}], "use_artifacts": [names]}``;
        values are decoded from JSON (nested keys joined by ``/``).

    Raises:
        ValueError: the file is not a W&B run file.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run: dict[str, Any] = {"history": [], "summary": {}, "config": {}, "artifacts": [], "metrics": [], "use_artifacts": []}

    def key(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for data in _raw_records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["config"].update({key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "history":
            run["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            run["summary"].update({key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "config":
            run["config"].update({key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "artifact":
            a = rec.artifact
            run["artifacts"].append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                                     "files": sorted(e.path for e in a.manifest.contents)})
        elif kind == "metric":
            run["metrics"].append({"name": rec.metric.name or rec.metric.glob_name, "step_metric": rec.metric.step_metric,
                                   "summary": str(rec.metric.summary)})
        elif kind == "use_artifact":
            run["use_artifacts"].append(rec.use_artifact.name)
    return run

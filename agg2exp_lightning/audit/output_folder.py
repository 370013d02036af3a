"""The audit's output folder: which audit it holds (a fingerprint), resume or refuse, atomic writes.

A folder belongs to the audit whose fingerprint is in its ``audit.json``. Opening it for the same
audit resumes (finished per-scan results are kept); for another audit it is refused unless
``overwrite`` is set, which removes only the files an audit writes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "audit.json"
#: Everything an audit writes in its folder (files and folders); ``overwrite`` removes only these.
AUDIT_OUTPUTS: tuple[str, ...] = (MANIFEST, "summary.json", "per_scan.csv", "report.html", "figures", "scans", "failed_scans.json", "reference_scans")


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(config: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a JSON-serialisable audit configuration (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


#: Names of the temporary files of :func:`atomic_write_bytes`: ``.<name>.<pid>.<8 hex>.tmp``.
_TEMPORARY = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and :func:`os.replace`,
    so a reader (or a resumed audit) never sees a half-written file.

    Raises:
        OSError: the file cannot be written (e.g. a full disk or a read-only folder); ``path`` keeps
            its earlier content and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # default permissions (umask), unlike mkstemp's 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write strict JSON (NaN refused: convert it to ``None`` first), indented, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _remove_temporaries(out: Path) -> None:
    """Remove the temporary files of writes a killed audit left behind (never read: their names differ)."""
    for folder in (out, *(out / name for name in AUDIT_OUTPUTS if (out / name).is_dir()), out / "figures" / "cases"):
        for tmp in folder.glob(".*.tmp"):
            if _TEMPORARY.fullmatch(tmp.name):
                log.info("removing %s, left by an interrupted write", tmp)
                tmp.unlink(missing_ok=True)


def open_output_folder(out_dir: str | Path, config: Mapping[str, Any], *, overwrite: bool = False) -> Literal["new", "resume"]:
    """Claim ``out_dir`` for the audit described by ``config``.

    Args:
        out_dir: the output folder (created if missing).
        config: JSON-serialisable description of the audit's inputs and settings; its
            :func:`fingerprint` identifies the audit.
        overwrite: replace another audit's results instead of refusing.

    Returns:
        ``"resume"`` when the folder holds this audit already, else ``"new"``.

    Raises:
        DataError: the folder holds another audit's results (or audit files of unknown origin)
            and ``overwrite`` is not set; ``out_dir`` is a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} is a file, expected a folder")
    config = json.loads(json.dumps(dict(config), default=str))
    fp = fingerprint(config)
    manifest = out / MANIFEST
    present = [name for name in AUDIT_OUTPUTS if (out / name).exists()]
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
            old_fp, old_config = old.get("fingerprint"), dict(old.get("config", {}))
            unreadable = None
        except (UnicodeDecodeError, ValueError, AttributeError, TypeError) as err:  # never trusted: JSON only
            old_fp, old_config, unreadable = None, {}, f"{type(err).__name__}: {err}"
        if old_fp == fp:
            log.info("output folder %s holds this audit already: resuming", out)
            _remove_temporaries(out)
            return "resume"
        if not overwrite:
            if unreadable is not None:
                raise DataError(
                    f"output folder {out}: its {MANIFEST} is not the JSON an audit writes ({unreadable}), so it cannot "
                    "be resumed; choose another --out or pass --overwrite to replace its audit files"
                )
            diff = sorted(k for k in set(config) | set(old_config) if config.get(k) != old_config.get(k))
            raise DataError(
                f"output folder {out} holds the results of another audit (differs in: {', '.join(diff) or 'fingerprint'}); "
                "choose another --out or pass --overwrite to replace them"
            )
    elif present and not overwrite:
        raise DataError(f"output folder {out} holds audit files {present} without {MANIFEST}; choose another --out or pass --overwrite")
    if present:
        log.warning("overwriting the audit results in %s", out)
        for name in present:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"fingerprint": fp, "config": config})
    return "new"

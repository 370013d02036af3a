"""An output folder that belongs to one job: resume the same job, refuse (or overwrite) another.

A folder belongs to the job whose configuration fingerprint is in its manifest (``audit.json`` for an
audit, ``settings.json`` for a method comparison): ``{"fingerprint": <hex>, "config": {...}}``.
Opening it again for the same configuration resumes (finished results are kept, temporaries of killed
writes removed); for another configuration it is refused with the keys that differ, unless
``overwrite`` is set, which removes only the outputs the job owns.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.utils.files import atomic_write_json, fingerprint, remove_temporaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputFolderKind:
    """What kind of job owns a folder, and how its messages read.

    Attributes:
        manifest: the file naming the job's configuration (``"audit.json"``).
        outputs: everything the job writes in its folder (files and folders), the manifest included;
            ``overwrite`` removes only these, and they are where temporaries are cleaned on resume.
        job: the job in words, with its article (``"an audit"``, ``"a comparison"``).
        label: how the folder is named in messages (``"output folder"``, ``"`out_dir`"``).
        remedy: what the user can do about a refused folder (``"choose another --out or pass --overwrite"``).
    """

    manifest: str
    outputs: tuple[str, ...]
    job: str
    label: str = "output folder"
    remedy: str = "choose another output folder or pass overwrite=True"

    @property
    def noun(self) -> str:
        """The job without its article (``"audit"``)."""
        return self.job.split(" ", 1)[-1]


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """The fingerprint :func:`open_output_folder` stores: of ``config`` as its JSON reads back."""
    return fingerprint(_as_json(config))


def _as_json(config: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(config), default=str))


def open_output_folder(
    out_dir: str | Path, config: Mapping[str, Any], kind: OutputFolderKind, *, overwrite: bool = False
) -> Literal["new", "resume"]:
    """Claim ``out_dir`` for the job of ``kind`` described by ``config``.

    Args:
        out_dir: the output folder (created if missing).
        config: JSON-serialisable description of the job's inputs and settings (other values are
            stored as ``str``); its :func:`config_fingerprint` identifies the job.
        kind: the manifest, the owned outputs and the wording of messages.
        overwrite: replace another job's results instead of refusing.

    Returns:
        ``"resume"`` when the folder holds this job already, else ``"new"``.

    Raises:
        DataError: the folder holds another job's results (or outputs without a manifest, or a
            manifest that is not the JSON this code writes) and ``overwrite`` is not set; ``out_dir``
            is a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{kind.label} {out} is a file, expected a folder")
    config = _as_json(config)
    fp = fingerprint(config)
    manifest = out / kind.manifest
    present = [name for name in kind.outputs if (out / name).exists()]
    if manifest.is_file():
        try:  # never trusted: JSON only
            old = json.loads(manifest.read_text(encoding="utf-8"))
            old_fp, old_config = old.get("fingerprint"), dict(old.get("config", {}))
            unreadable = None
        except (UnicodeDecodeError, ValueError, AttributeError, TypeError) as err:
            old_fp, old_config, unreadable = None, {}, f"{type(err).__name__}: {err}"
        if old_fp == fp:
            log.info("%s %s holds this %s already: resuming", kind.label, out, kind.noun)
            owned = [out / name for name in kind.outputs if (out / name).is_dir()]
            for folder in (out, *owned, *(p for d in owned for p in d.rglob("*") if p.is_dir())):
                remove_temporaries(folder)
            return "resume"
        if not overwrite:
            if unreadable is not None:
                raise DataError(
                    f"{kind.label} {out}: its {kind.manifest} is not the JSON {kind.job} writes ({unreadable}), "
                    f"so it cannot be resumed; {kind.remedy}"
                )
            diff = sorted(k for k in set(config) | set(old_config) if config.get(k) != old_config.get(k))
            raise DataError(
                f"{kind.label} {out} holds the results of another {kind.noun} "
                f"(differs in: {', '.join(diff) or 'fingerprint'}); {kind.remedy}"
            )
    elif present and not overwrite:
        raise DataError(f"{kind.label} {out} holds {kind.noun} files {present} without {kind.manifest}; {kind.remedy}")
    if present:
        log.warning("overwriting the %s results in %s", kind.noun, out)
        for name in present:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"fingerprint": fp, "config": config})
    return "new"

"""The audit's output folder: which audit it holds (a fingerprint in ``audit.json``), resume or refuse.

A folder belongs to the audit whose fingerprint is in its ``audit.json``. Opening it for the same
audit resumes (finished per-scan results are kept); for another audit it is refused unless
``overwrite`` is set, which removes only the files an audit writes. The logic is the generic
:func:`agg2exp_lightning.utils.output_folder.open_output_folder`; atomic writes and hashes are in
:mod:`agg2exp_lightning.utils.files`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from agg2exp_lightning.utils import output_folder as _generic

__all__ = ["AUDIT_FOLDER", "AUDIT_OUTPUTS", "MANIFEST", "open_output_folder"]

MANIFEST = "audit.json"
#: Everything an audit writes in its folder (files and folders); ``overwrite`` removes only these.
AUDIT_OUTPUTS: tuple[str, ...] = (MANIFEST, "summary.json", "per_scan.csv", "report.html", "figures", "scans", "failed_scans.json", "reference_scans")
AUDIT_FOLDER = _generic.OutputFolderKind(
    manifest=MANIFEST, outputs=AUDIT_OUTPUTS, job="an audit", remedy="choose another --out or pass --overwrite"
)


def open_output_folder(out_dir: str | Path, config: Mapping[str, Any], *, overwrite: bool = False) -> Literal["new", "resume"]:
    """Claim ``out_dir`` for the audit described by ``config``.

    Args:
        out_dir: the output folder (created if missing).
        config: JSON-serialisable description of the audit's inputs and settings; its
            :func:`~agg2exp_lightning.utils.output_folder.config_fingerprint` identifies the audit.
        overwrite: replace another audit's results instead of refusing.

    Returns:
        ``"resume"`` when the folder holds this audit already, else ``"new"``.

    Raises:
        DataError: the folder holds another audit's results (or audit files of unknown origin)
            and ``overwrite`` is not set; ``out_dir`` is a file.
    """
    return _generic.open_output_folder(out_dir, config, AUDIT_FOLDER, overwrite=overwrite)

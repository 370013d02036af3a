"""nnU-Net v2 trained-model folders (``dataset.json``, ``plans.json``, ``fold_K/checkpoint_final.pth``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def is_nnunet_folder(path: Any) -> bool:
    """Whether ``path`` is a folder with ``dataset.json`` and ``plans.json`` (an nnU-Net v2 trained-model folder)."""
    if not isinstance(path, (str, Path)):
        return False
    p = Path(path)
    return p.is_dir() and (p / "dataset.json").is_file() and (p / "plans.json").is_file()

"""agg2exp-lightning: train 3D segmentation models and explain them with aggregated attributions.

The top-level package stays light to import: heavy modules (torch, monai, lightning) load only
when their submodules are imported.
"""
from __future__ import annotations

from agg2exp_lightning.labels import NUM_CLASSES, THORAX_CLASSES

__version__ = "0.1.0"

__all__ = ["NUM_CLASSES", "THORAX_CLASSES", "__version__"]

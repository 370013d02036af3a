"""Model sources: this toolkit's checkpoints, MONAI bundle folders, nnU-Net v2 trained-model folders and
importable factories, each with the names of its output channels and how scans reach it.

:func:`load_model` takes any of them (recognised from the source itself) and returns a
:class:`LoadedModel`: the ``nn.Module`` in eval mode, its class names, and its
:class:`~agg2exp_lightning.model_loading.source.ScanRunner` (preprocessing with what undoes it,
inference, maps back onto the scan's grid; the contract in :mod:`~agg2exp_lightning.model_loading.source`).
Every weight file is read with ``weights_only=True``; weights that do not fit the model are refused naming
the keys and shapes.

Example:
    >>> loaded = load_model("runs/demo/checkpoints/best.ckpt")  # doctest: +SKIP
    >>> loaded = load_model("bundles/spleen_ct_segmentation", bundle_overrides=["inferer#sw_batch_size=2"])  # doctest: +SKIP
    >>> loaded = load_model("nnUNet_results/Dataset291_TotalSegmentator_part1/nnUNetTrainer__nnUNetPlans__3d_fullres")  # doctest: +SKIP
    >>> loaded = load_model("mypkg.nets:build", weights="weights.pt", label_map="labels.yaml")  # doctest: +SKIP
"""
from agg2exp_lightning.model_loading.bundle import OVERRIDE_SYNTAX, parse_overrides
from agg2exp_lightning.model_loading.checkpoints import (
    load_state_dict_checked,
    read_weights_file,
    state_dict_mismatch,
    unwrap_state_dict,
)
from agg2exp_lightning.model_loading.factory import import_factory
from agg2exp_lightning.model_loading.label_map import LABEL_MAP_FORMATS, check_label_count, label_names, read_label_map
from agg2exp_lightning.model_loading.loading import (
    DEFAULT_SPACING,
    LoadedModel,
    SourceKind,
    describe_source,
    load_model,
    output_channels,
)
from agg2exp_lightning.model_loading.source import ScanMaps, ScanRunner, ToolkitRunner
from agg2exp_lightning.model_loading.toolkit import (
    RESUME_KEYS,
    check_resume_checkpoint,
    load_segmentation_checkpoint,
    read_lightning_checkpoint,
)

__all__ = [
    "DEFAULT_SPACING",
    "LABEL_MAP_FORMATS",
    "LoadedModel",
    "OVERRIDE_SYNTAX",
    "RESUME_KEYS",
    "ScanMaps",
    "ScanRunner",
    "SourceKind",
    "ToolkitRunner",
    "check_label_count",
    "check_resume_checkpoint",
    "describe_source",
    "import_factory",
    "label_names",
    "load_model",
    "load_segmentation_checkpoint",
    "load_state_dict_checked",
    "output_channels",
    "parse_overrides",
    "read_label_map",
    "read_lightning_checkpoint",
    "read_weights_file",
    "state_dict_mismatch",
    "unwrap_state_dict",
]

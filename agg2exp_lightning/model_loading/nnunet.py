"""nnU-Net v2 trained-model folders (``dataset.json``, ``plans.json``, ``fold_K/checkpoint_final.pth``),
run as nnU-Net's own predictor runs them.

- the network: built by nnunetv2 from the plans (the trainer's ``build_network_architecture``, deep
  supervision off), one copy per fold with that fold's weights; several folds are one module whose
  logits are the mean of the folds' (nnU-Net's ensembling);
- preprocessing: the configuration's own preprocessor (``run_case``: the plans' reader, transpose,
  crop to non-zero, normalisation from the plans' intensity properties, resampling);
- inference: :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor` (Gaussian windows of the
  plans' patch size, tile step 0.5) with test-time mirroring off (attributions explain one pass);
- maps back: nnU-Net's own export (resampling of the logits, argmax, the crop reverted, the transpose
  reverted, the reader's writer), attributions through the same resampling, crop and transpose.

Checkpoints are read with ``weights_only=True`` (numpy scalars in their training log allowed); nothing
else of them is unpickled. Region-based label sets (``regions_class_order``) are refused: their
classes overlap, so there is no one label per voxel to explain.
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agg2exp_lightning.errors import DataError
from agg2exp_lightning.model_loading.source import ScanMaps, ScanRunner

log = logging.getLogger(__name__)

#: The checkpoint of each fold unless ``checkpoint_name`` says otherwise.
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
#: nnU-Net's tile step (half a patch), as its predictor's default.
TILE_STEP = 0.5
#: What the audit says about how it runs nnU-Net.
NOTES = ("nnU-Net: test-time mirroring is off (the attributions and the prediction map explain one pass of the network)",
         "nnU-Net: the explanation blends Gaussian windows of the plans' patch size at overlap 0.5 as MONAI places them; "
         "the prediction map (--save-maps) is nnU-Net's own predictor's (tile step 0.5)")


def is_nnunet_folder(path: Any) -> bool:
    """Whether ``path`` is a folder with ``dataset.json`` and ``plans.json`` (an nnU-Net v2 trained-model folder)."""
    if not isinstance(path, (str, Path)):
        return False
    p = Path(path)
    return p.is_dir() and (p / "dataset.json").is_file() and (p / "plans.json").is_file()


def _require_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError as err:
        raise DataError("nnU-Net v2 folders need the package 'nnunetv2', which is not installed: "
                        "pip install 'agg2exp-lightning[nnunet]'") from err


def _folds_present(root: Path, checkpoint_name: str) -> list[str]:
    return sorted((p.name.split("_", 1)[1] for p in root.glob("fold_*") if (p / checkpoint_name).is_file()),
                  key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint with ``weights_only=True`` (numpy scalars and dtypes of its log allowed)."""
    import torch

    from agg2exp_lightning.model_loading.checkpoints import UNREADABLE

    allowed = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    try:
        allowed.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:
        allowed.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure: the file cannot be used
        raise DataError(f"nnU-Net checkpoint {path} cannot be loaded with weights_only=True "
                        f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}): {UNREADABLE}") from err
    if not isinstance(ckpt, Mapping) or "network_weights" not in ckpt:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise DataError(f"nnU-Net checkpoint {path}: expected 'network_weights' (an nnU-Net v2 checkpoint), found {found}")
    return dict(ckpt)


def _fold_ensemble(networks: Sequence[Any]) -> Any:
    """One module whose logits are the mean of the folds' networks' logits (nnU-Net's ensembling)."""
    import torch

    class _FoldEnsemble(torch.nn.Module):
        """Mean of the logits of nnU-Net folds (one network per fold)."""

        def __init__(self, nets: Sequence[torch.nn.Module]) -> None:
            super().__init__()
            self.folds = torch.nn.ModuleList(nets)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.folds[0](x)
            for net in self.folds[1:]:
                out = out + net(x)
            return out / len(self.folds)

    return networks[0] if len(networks) == 1 else _FoldEnsemble(networks)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unjson(value: Any) -> Any:
    if isinstance(value, Mapping):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return {k: _unjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjson(v) for v in value]
    return value


class NnunetRunner(ScanRunner):
    """nnU-Net's own preprocessing, predictor and export for one trained-model folder (see the module docstring).

    Args:
        root: the folder.
        predictor: an initialised ``nnUNetPredictor`` (mirroring off, Gaussian, tile step 0.5).
        folds: the folds used.
        checkpoint_name: the checkpoint file of each fold.
    """

    name = "nnunetv2"
    notes = NOTES

    def __init__(self, root: Path, predictor: Any, folds: Sequence[str], checkpoint_name: str) -> None:
        self.root, self.predictor, self.folds, self.checkpoint_name = Path(root), predictor, list(folds), checkpoint_name
        cm = predictor.configuration_manager
        self.window = {"roi_size": tuple(int(p) for p in cm.patch_size), "sw_batch_size": 1, "overlap": TILE_STEP,
                       "mode": "gaussian", "sigma_scale": 0.125}

    @property
    def _parts(self) -> tuple[Any, Any, Any, Any]:
        p = self.predictor
        return p.plans_manager, p.configuration_manager, p.dataset_json, p.label_manager

    def _run_case(self, path: str | Path, seg_file: str | None = None) -> tuple[np.ndarray, Any, dict[str, Any]]:
        pm, cm, dataset_json, _ = self._parts
        try:
            preprocessor = cm.preprocessor_class(verbose=False)
            return preprocessor.run_case([str(path)], seg_file, pm, cm, dataset_json)
        except Exception as err:  # noqa: BLE001 - name the scan and the cause
            from agg2exp_lightning.errors import root_cause

            cause = root_cause(err)
            raise DataError(f"nnU-Net folder {self.root}: its preprocessing fails on {path}: {type(cause).__name__}: "
                            f"{str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ''}") from err

    def _as_input(self, data: np.ndarray, properties: Mapping[str, Any], path: str | Path) -> Any:
        import torch
        from monai.data import MetaTensor

        meta = {"nnunet_properties": json.dumps(_jsonable(properties)), "filename_or_obj": str(path)}
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(data)).float(), meta=meta)

    def preprocess(self, path: str | Path) -> Any:
        data, _, properties = self._run_case(path)
        return self._as_input(data, properties, path)

    def scan_item(self, record: Mapping[str, Any], mapping: Mapping[str, Sequence[str]], num_classes: int,
                  class_names: Sequence[str] | None, *, with_labels: bool = True, extra_masks: Any = None) -> dict[str, Any]:
        """The image and labels through nnU-Net's own preprocessing (labels: its segmentation path)."""
        import torch
        from monai.data import MetaTensor

        if extra_masks:
            raise DataError("--extra-masks: not supported with an nnU-Net folder yet (its preprocessing crops and transposes the grid)")
        out: dict[str, Any] = {"subject_id": record["subject_id"], "metadata": dict(record.get("metadata") or {})}
        seg_file, tmp = None, None
        if with_labels and record.get("labels"):
            if record.get("layout") == "totalsegmentator":  # structures merged into the model's labels, written once for nnU-Net's reader
                import nibabel as nib

                from agg2exp_lightning.data.transforms import load_subject_arrays

                _, labels, affine = load_subject_arrays(record, mapping, num_classes, class_names)
                tmp = tempfile.TemporaryDirectory(prefix="agg2exp-nnunet-")
                seg_file = str(Path(tmp.name) / "labels.nii.gz")
                nib.save(nib.Nifti1Image(labels, affine), seg_file)
            else:
                seg_file = str(record["labels"])
        try:
            data, seg, properties = self._run_case(record["image"], seg_file)
        finally:
            if tmp is not None:
                tmp.cleanup()
        out["image"] = self._as_input(data, properties, record["image"])
        if seg_file is not None and seg is not None:
            out["label"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(seg)).float().clamp(min=0))
        out["body"] = MetaTensor(torch.from_numpy(self._body(record["image"])).float())
        return out

    def _body(self, path: str | Path) -> np.ndarray:
        """The body (HU above :data:`~agg2exp_lightning.model_loading.source.BODY_HU`) through nnU-Net's own
        preprocessing of a segmentation, so that it lies on the network's grid."""
        import nibabel as nib

        from agg2exp_lightning.data.reading import read_volume
        from agg2exp_lightning.model_loading.source import BODY_HU

        hu, affine = read_volume(path, what="image")
        with tempfile.TemporaryDirectory(prefix="agg2exp-nnunet-") as tmp:
            body_file = str(Path(tmp) / "body.nii.gz")
            nib.save(nib.Nifti1Image((np.asarray(hu) > BODY_HU).astype(np.uint8), affine), body_file)
            _, seg, _ = self._run_case(path, body_file)
        return np.ascontiguousarray(np.asarray(seg) > 0)

    def record_transform(self, mapping: Any, num_classes: int, class_names: Any, *, extra_masks: Any = None) -> Any:
        if extra_masks:
            raise DataError("--extra-masks: not supported with an nnU-Net folder yet (its preprocessing crops and transposes the grid)")
        return super().record_transform(mapping, num_classes, class_names, extra_masks=None)

    def infer(self, model: Any, image: Any) -> Any:
        from agg2exp_lightning.model_loading.source import _plain

        return self.predictor.predict_logits_from_preprocessed_data(_plain(image)[0].float())[None]

    def to_scan_grid(self, model: Any, image: Any, attribution: Any, prediction: Any) -> ScanMaps:
        import nibabel as nib
        import torch
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        from agg2exp_lightning.model_loading.source import _plain

        pm, cm, dataset_json, lm = self._parts
        meta = dict(getattr(image, "meta", {}))
        properties = _unjson(json.loads(meta["nnunet_properties"]))
        logits = self.infer(model, _plain(image)[None])[0]
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(logits, pm, cm, lm, properties)
        with tempfile.TemporaryDirectory(prefix="agg2exp-nnunet-") as tmp:  # the reader's own writer gives the file's grid
            out_file = str(Path(tmp) / f"seg{dataset_json['file_ending']}")
            pm.image_reader_writer_class().write_seg(seg, out_file, properties)
            written = nib.load(out_file)
            labels, affine = np.asarray(written.dataobj), np.asarray(written.affine, dtype=float)
        perm = next((p for p in ((2, 1, 0), (0, 1, 2)) if seg.transpose(p).shape == labels.shape and np.array_equal(seg.transpose(p), labels)), None)
        if perm is None:
            raise DataError(f"nnU-Net folder {self.root}: its reader {pm.image_reader_writer_class.__name__} writes files whose voxel "
                            "order cannot be matched to its arrays; expected SimpleITKIO or NibabelIO")
        maps = None
        if attribution is not None:
            attr = _plain(attribution).float()
            spacing_t = [properties["spacing"][i] for i in pm.transpose_forward]
            current = cm.spacing if len(cm.spacing) == len(properties["shape_after_cropping_and_before_resampling"]) else [spacing_t[0], *cm.spacing]
            resampled = cm.resampling_fn_probabilities(attr, properties["shape_after_cropping_and_before_resampling"], current, spacing_t)
            resampled = torch.as_tensor(np.asarray(resampled)).float().numpy()
            full = np.zeros((attr.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
            bbox = properties["bbox_used_for_cropping"]
            full[(slice(None), *[slice(int(b[0]), int(b[1])) for b in bbox])] = resampled
            full = full.transpose([0, *[i + 1 for i in pm.transpose_backward]])
            maps = full.transpose([0, *[i + 1 for i in perm]])
        return ScanMaps(maps, labels.astype(np.uint8), affine)

    def settings(self) -> dict[str, Any]:
        from agg2exp_lightning.utils import file_sha256

        p = self.predictor
        return {"runner": self.name, "folder": str(self.root.resolve()), "folds": self.folds, "checkpoint_name": self.checkpoint_name,
                "configuration": p.configuration_manager.configuration_name if hasattr(p.configuration_manager, "configuration_name") else None,
                "plans_sha256": file_sha256(self.root / "plans.json"), "tile_step_size": p.tile_step_size, "use_gaussian": p.use_gaussian,
                "use_mirroring": p.use_mirroring,
                "window": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.window.items()}}


def read_nnunet_folder(folder: str | Path, *, folds: Sequence[int | str] | str | None = None, checkpoint_name: str | None = None,
                       map_location: Any = "cpu") -> dict[str, Any]:
    """The network (folds ensembled), class names and :class:`NnunetRunner` of an nnU-Net v2 trained-model folder.

    Args:
        folder: ``dataset.json``, ``plans.json`` and ``fold_K/<checkpoint_name>``.
        folds: fold ids or ``"all"`` (the ``fold_all`` model); default every fold present.
        checkpoint_name: default ``checkpoint_final.pth``.
        map_location: where the network is put.

    Returns:
        ``{"model", "class_names", "out_channels", "in_channels", "spacing", "runner", "identity"}``.

    Raises:
        DataError: nnunetv2 not installed (the extra named), a requested fold missing (the folds
            present listed), an unreadable checkpoint, weights that do not fit the planned network, or
            a region-based label set.
    """
    _require_nnunet()
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from agg2exp_lightning.model_loading.checkpoints import load_state_dict_checked
    from agg2exp_lightning.model_loading.label_map import label_names
    from agg2exp_lightning.utils import file_sha256

    root = Path(folder)
    name = checkpoint_name or DEFAULT_CHECKPOINT
    try:
        dataset_json = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        plans = json.loads((root / "plans.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"nnU-Net folder {root}: dataset.json or plans.json is not valid JSON: {str(err)[:200]}") from err
    present = _folds_present(root, name)
    wanted = present if folds is None else (["all"] if folds == "all" else [str(f) for f in ([folds] if isinstance(folds, (str, int)) else folds)])
    missing = [f for f in wanted if f not in present]
    if not wanted or missing:
        raise DataError(f"nnU-Net folder {root}: no fold_{missing[0] if missing else 'K'}/{name}; folds present with {name}: "
                        f"{present or 'none'}" + (" (--folds picks among them, --checkpoint-name another file)" if present else ""))
    pm = PlansManager(plans)
    lm = pm.get_label_manager(dataset_json)
    if lm.has_regions:
        raise DataError(f"nnU-Net folder {root}: its labels are region-based (regions_class_order in dataset.json): its outputs are "
                        "overlapping regions with sigmoids, not one class per voxel, which the audit's regions need")
    checkpoints = [_read_checkpoint(root / f"fold_{f}" / name) for f in wanted]
    first = checkpoints[0]
    trainer_name = str(first.get("trainer_name", "nnUNetTrainer"))
    configuration = str(dict(first.get("init_args") or {}).get("configuration") or "")
    if configuration not in plans.get("configurations", {}):
        raise DataError(f"nnU-Net checkpoint {root / f'fold_{wanted[0]}' / name}: its configuration {configuration!r} is not in plans.json "
                        f"({sorted(plans.get('configurations', {}))})")
    cm = pm.get_configuration(configuration)
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise DataError(f"nnU-Net folder {root}: trainer {trainer_name!r} (from its checkpoint) is not a trainer class nnunetv2 knows")
    in_channels = determine_num_input_channels(pm, cm, dataset_json)
    out_channels = lm.num_segmentation_heads
    networks = []
    for f, ckpt in zip(wanted, checkpoints):
        net = trainer_class.build_network_architecture(pm, cm, in_channels, out_channels, enable_deep_supervision=False)
        load_state_dict_checked(net, ckpt["network_weights"], what=f"nnU-Net checkpoint {root / f'fold_{f}' / name}",
                                expected=f"the {configuration} network of plans.json")
        networks.append(net.eval())
    predictor = nnUNetPredictor(tile_step_size=TILE_STEP, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device(map_location), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(copy.deepcopy(networks[0]), pm, cm, [c["network_weights"] for c in checkpoints], dataset_json,
                                    trainer_name, first.get("inference_allowed_mirroring_axes"))
    names = label_names(dataset_json.get("labels") or {}, where=f"{root / 'dataset.json'} (labels)")
    runner = NnunetRunner(root, predictor, wanted, name)
    identity = {"nnunet_checkpoints_sha256": {f: file_sha256(root / f"fold_{f}" / name) for f in wanted},
                "nnunet_plans_sha256": file_sha256(root / "plans.json"), "nnunet_configuration": configuration}
    return {"model": _fold_ensemble(networks).to(map_location), "class_names": names, "out_channels": out_channels,
            "in_channels": in_channels, "spacing": tuple(float(s) for s in cm.spacing), "runner": runner, "identity": identity}

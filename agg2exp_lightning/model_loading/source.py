"""The model-source contract: how a scan file reaches a model and how its maps come back.

A model source (this toolkit's checkpoint, a MONAI bundle, an nnU-Net v2 folder, a factory) gives a
network and its class names (:class:`~agg2exp_lightning.model_loading.loading.LoadedModel`) and a
:class:`ScanRunner`: everything between a scan's file and that network, run as the source's own authors
run it.

- :meth:`ScanRunner.preprocess`: scan file -> model input ``[C_in, *S]`` (a MONAI ``MetaTensor`` whose
  metadata and applied operations are what undoing it needs);
- :attr:`ScanRunner.window`: how it is inferred (sliding windows and their blending, as
  :func:`agg2exp_lightning.explain.explain` takes them);
- :meth:`ScanRunner.infer`: the source's own inference (logits ``[1, C, *S]``);
- :meth:`ScanRunner.to_scan_grid`: an explanation's maps and prediction back onto the scan file's grid
  (the prediction as the source's own postprocessing makes it);
- :meth:`ScanRunner.settings`: what produced the prediction, for ``audit.json``.

The audit, the method comparison and ``predict`` use only this contract, so another source is one
more module here.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agg2exp_lightning.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["BODY_HU", "ScanMaps", "ScanRunner", "ToolkitRunner", "read_scan_record"]

#: HU above which a voxel is body, for sources whose preprocessing is not the toolkit's HU window (the
#: toolkit's :data:`~agg2exp_lightning.data.transforms.BODY_THRESHOLD` of its [-1024, 1024] window).
BODY_HU = -1024.0 + 2048.0 * 0.25


@dataclass(frozen=True)
class ScanMaps:
    """One scan's maps on its file's grid.

    Attributes:
        attribution: ``[T, *O]`` float32 maps (``O``: the file's shape), or ``None``.
        prediction: ``[*O]`` uint8 label map, as the source's own postprocessing makes it.
        affine: ``4x4`` voxel -> world (RAS mm) of the file's grid.
    """

    attribution: np.ndarray | None
    prediction: np.ndarray
    affine: np.ndarray


def read_scan_record(path: str | Path) -> dict[str, Any]:
    """A record dict for one scan file with no labels (the fields of
    :class:`~agg2exp_lightning.data.subjects.SubjectRecord`), its id from the file name."""
    p = Path(path)
    stem = p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem
    return {"subject_id": stem, "image": str(p), "labels": None, "layout": "manifest", "split": "", "metadata": {}}


def _plain(x: Any) -> Any:
    import torch

    from agg2exp_lightning.utils import plain_tensor

    return torch.as_tensor(plain_tensor(x))


def resample_onto(volume: np.ndarray, affine: np.ndarray, image: Any, *, mode: str = "nearest") -> Any:
    """``volume`` ``[K, *O]`` (on the grid of ``affine``) resampled onto the grid of the MetaTensor ``image``
    ``[C, *S]``: MONAI's :class:`~monai.transforms.SpatialResample` (labels and masks: nearest)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    src = MetaTensor(torch.as_tensor(np.asarray(volume, dtype=np.float32)), affine=torch.as_tensor(affine, dtype=torch.float64))
    out = SpatialResample(mode=mode, padding_mode="zeros", align_corners=False, dtype=torch.float64)(
        src, dst_affine=torch.as_tensor(np.asarray(image.affine), dtype=torch.float64), spatial_size=tuple(image.shape[1:]))
    return MetaTensor(_plain(out).float(), affine=image.affine.clone())


class ScanRunner(ABC):
    """How a model source reads, infers and maps back one scan (the contract; see the module docstring).

    Subclasses set :attr:`name` (``"toolkit"``, ``"monai.bundle"``, ``"nnunetv2"``) and implement
    :meth:`preprocess`, :meth:`to_scan_grid` and :meth:`settings`; :meth:`infer` defaults to
    :attr:`window`'s sliding windows (or one pass) and :meth:`scan_item` to labels and extra masks
    resampled (nearest) onto the preprocessed grid.
    """

    name: str = "runner"
    #: Sliding-window keywords of :func:`~agg2exp_lightning.explain.explain` (empty: one pass over the whole volume).
    window: dict[str, Any]
    #: Lines the audit prints about how this source's runner differs from its authors' (e.g. mirroring off).
    notes: tuple[str, ...] = ()

    @abstractmethod
    def preprocess(self, path: str | Path) -> Any:
        """The model's input ``[C_in, *S]`` for the scan file ``path`` (a MetaTensor carrying what undoing it needs).

        Raises:
            DataError: the file cannot be read, or the source's preprocessing fails (named).
        """

    def infer(self, model: Any, image: Any) -> Any:
        """Logits ``[1, C, *S]`` of the source's own inference of ``image`` ``[1, C_in, *S]`` (no gradients)."""
        import torch
        from monai.inferers import sliding_window_inference

        w = self.window
        x = _plain(image).float()
        with torch.no_grad():
            if not w or w.get("roi_size") is None:
                return model(x)
            return sliding_window_inference(x, tuple(w["roi_size"]), int(w.get("sw_batch_size", 1)), model,
                                            overlap=w.get("overlap", 0.25), mode=w.get("mode", "constant"),
                                            sigma_scale=w.get("sigma_scale", 0.125))

    @abstractmethod
    def to_scan_grid(self, model: Any, image: Any, attribution: Any, prediction: Any) -> ScanMaps:
        """``attribution`` ``[T, *S]`` (or ``None``) and the prediction on the scan file's grid.

        Args:
            model: the network (a source whose postprocessing needs the logits infers again).
            image: the preprocessed input ``[C_in, *S]`` as :meth:`preprocess` returned it (after a
                DataLoader: decollated, with its metadata).
            attribution: maps on the model's grid.
            prediction: ``[*S]`` argmax labels on the model's grid.
        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-serialisable description of this runner (``{"runner": name, ...}``), recorded in ``audit.json``."""

    def scan_item(self, record: Mapping[str, Any], mapping: Mapping[str, Sequence[str]], num_classes: int,
                  class_names: Sequence[str] | None, *, with_labels: bool = True,
                  extra_masks: tuple[Sequence[str], Mapping[str, Mapping[str, Path]]] | None = None) -> dict[str, Any]:
        """One audit item: ``image`` from :meth:`preprocess`, the body (HU above :data:`BODY_HU`) under ``"body"``,
        and the labels (and extra masks) of the record, each brought onto that grid by nearest-neighbour
        resampling (attribution outside the body, Dice, extra regions)."""
        from agg2exp_lightning.audit.extra_masks import EXTRA_MASKS_KEY
        from agg2exp_lightning.data.reading import read_volume
        from agg2exp_lightning.data.transforms import load_subject_arrays

        image = self.preprocess(record["image"])
        out: dict[str, Any] = {"subject_id": record["subject_id"], "metadata": dict(record.get("metadata") or {}), "image": image}
        hu, hu_affine = read_volume(record["image"], what=f"image of subject {record['subject_id']}")
        out["body"] = resample_onto((np.asarray(hu) > BODY_HU)[None].astype(np.float32), hu_affine, image)
        if with_labels and record.get("labels"):
            _, labels, affine = load_subject_arrays(record, mapping, num_classes, class_names)
            if labels is not None:
                out["label"] = resample_onto(labels[None], affine, image)
        if extra_masks:
            from agg2exp_lightning.data.nifti import check_binary
            from agg2exp_lightning.data.reading import read_volume

            names, files = extra_masks
            stack = []
            for name in names:
                path = files.get(str(record["subject_id"]), {}).get(name)
                if path is None:
                    stack.append(None)
                    continue
                mask, mask_affine = read_volume(path, what=f"extra mask {name!r}")
                stack.append(resample_onto(check_binary(mask, what=f"extra mask {path}")[None], mask_affine, image)[0])
            import torch
            from monai.data import MetaTensor

            zeros = torch.zeros(tuple(image.shape[1:]))
            out[EXTRA_MASKS_KEY] = MetaTensor(torch.stack([zeros if s is None else _plain(s).float() for s in stack]),
                                              affine=image.affine.clone())
        return out

    def record_transform(self, mapping: Mapping[str, Sequence[str]], num_classes: int, class_names: Sequence[str] | None, *,
                         extra_masks: tuple[Sequence[str], Mapping[str, Mapping[str, Path]]] | None = None
                         ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A callable ``record dict -> item`` for the audit's dataset (see :meth:`scan_item`)."""
        return _RecordTransform(self, mapping, num_classes, class_names, extra_masks)


class _RecordTransform:
    """Picklable ``record -> item`` of a runner (DataLoader workers)."""

    def __init__(self, runner: ScanRunner, mapping: Any, num_classes: int, class_names: Any, extra_masks: Any) -> None:
        self.runner, self.mapping, self.num_classes = runner, dict(mapping), num_classes
        self.class_names, self.extra_masks = class_names, extra_masks

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.runner.scan_item(record, self.mapping, self.num_classes, self.class_names, extra_masks=self.extra_masks)


class ToolkitRunner(ScanRunner):
    """This toolkit's preprocessing (:func:`~agg2exp_lightning.data.transforms.preprocessing`: RAS, the
    model's spacing, HU window [-1024, 1024] to [0, 1], crop to the body unless the protocol says
    otherwise) and its sliding windows; maps go back by one resampling from the preprocessed affine to
    the file's (:func:`~agg2exp_lightning.audit.maps.to_original_grid`), the prediction by nearest neighbour.

    Used for this toolkit's checkpoints, factories and modules given in Python.

    Args:
        spacing: resampling spacing in mm.
        window: sliding-window keywords of :func:`~agg2exp_lightning.explain.explain` (empty: whole volumes).
        crop_to_body: crop to the body (the protocol decides; the published evaluation did not).
    """

    name = "toolkit"

    def __init__(self, spacing: Sequence[float], window: Mapping[str, Any] | None = None, *, crop_to_body: bool = True) -> None:
        self.spacing = tuple(float(s) for s in spacing)
        self.window = dict(window or {})
        self.crop_to_body = bool(crop_to_body)

    def _chain(self, mapping: Mapping[str, Sequence[str]], num_classes: int, class_names: Sequence[str] | None, *,
               with_labels: bool, extra_masks: Any = None) -> Any:
        from monai.transforms import Compose

        from agg2exp_lightning.audit.extra_masks import EXTRA_MASKS_KEY, LoadExtraMasksd
        from agg2exp_lightning.data.transforms import preprocessing

        steps = preprocessing(mapping, num_classes, self.spacing, with_labels=with_labels, class_names=class_names,
                              crop_to_body=self.crop_to_body, extra_keys=(EXTRA_MASKS_KEY,) if extra_masks else ())
        if extra_masks:  # loaded right after the scan, then through the same spatial transforms
            steps.insert(1, LoadExtraMasksd(*extra_masks))
        return Compose(steps)

    def preprocess(self, path: str | Path) -> Any:
        return self._chain({}, 2, None, with_labels=False)(read_scan_record(path))["image"]

    def record_transform(self, mapping: Mapping[str, Sequence[str]], num_classes: int, class_names: Sequence[str] | None, *,
                         extra_masks: Any = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return _ToolkitRecordTransform({labels: self._chain(mapping, num_classes, class_names, with_labels=labels, extra_masks=extra_masks)
                                        for labels in (True, False)})

    def to_scan_grid(self, model: Any, image: Any, attribution: Any, prediction: Any) -> ScanMaps:
        from agg2exp_lightning.audit.maps import ScanGeometry, to_original_grid

        geometry = image if isinstance(image, ScanGeometry) else ScanGeometry.from_meta(getattr(image, "meta", {}))
        pred = _plain(prediction)
        labels = to_original_grid(pred.reshape(1, *pred.shape[-3:]).float(), geometry, mode="nearest")[0]
        maps = None if attribution is None else to_original_grid(_plain(attribution).float(), geometry, mode="bilinear")
        return ScanMaps(maps, np.rint(labels).astype(np.uint8), np.asarray(geometry.original_affine, dtype=float))

    def settings(self) -> dict[str, Any]:
        return {"runner": self.name, "spacing": list(self.spacing), "crop_to_body": self.crop_to_body,
                "window": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.window.items()}}


class _ToolkitRecordTransform:
    def __init__(self, chains: Mapping[bool, Any]) -> None:
        self.chains = dict(chains)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return self.chains[bool(item.get("labels"))](item)


def missing_package_error(err: BaseException, where: str) -> DataError | None:
    """A one-line :class:`DataError` for a transform that needs an optional package that is not installed
    (``itk`` for ``ITKReader``, ``pydicom`` ...), naming the package and the extra that brings it; else ``None``."""
    from agg2exp_lightning.errors import root_cause

    extras = {"itk": "itk", "nnunetv2": "nnunet", "pydicom": None, "nrrd": None}
    cause = root_cause(err)
    text = f"{type(cause).__name__}: {cause}"
    for package, extra in extras.items():
        if isinstance(cause, (ImportError, ModuleNotFoundError)) or f"'{package}'" in text or f"required package `{package}`" in text:
            if package in text:
                return DataError(f"{where} needs the package {package!r}, which is not installed: pip install {package}"
                                 + (f" (or pip install 'agg2exp-lightning[{extra}]')" if extra else ""))
    return None

"""MONAI transform pipelines as the published model used them.

RAS orientation, resampling to a configured spacing, HU window [-1024, 1024] scaled to [0, 1] with
clipping, a crop to the body, and for training random crops by positive/negative label plus light
intensity augmentation. No left/right flips: they would swap the left and right labels.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform

from agg2exp_lightning.data.nifti import check_ct, check_same_grid
from agg2exp_lightning.data.reading import read_volume
from agg2exp_lightning.data.totalsegmentator import load_totalsegmentator_subject
from agg2exp_lightning.errors import DataError

HU_WINDOW: tuple[float, float] = (-1024.0, 1024.0)
#: Body threshold on the windowed [0, 1] image: HU above about -500.
BODY_THRESHOLD = 0.25


#: Axis labels of nibabel's world coordinates (RAS+), given to Orientationd explicitly: MONAI >= 1.5 warns that
#: its default will change to the MetaTensor's own space.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _is_body(x: torch.Tensor) -> torch.Tensor:
    return x > BODY_THRESHOLD


def load_subject_arrays(
    record: Mapping[str, Any], mapping: Mapping[str, Sequence[str]], num_classes: int,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Load ``(ct HU float32, labels uint8 or None, affine)`` for a record dict from :class:`SubjectRecord`.

    TotalSegmentator structures are merged into the label ids of ``class_names`` (default: the 17 thorax
    labels when ``num_classes`` is 17). A manifest's image and labels may be in any format
    :func:`~agg2exp_lightning.data.reading.read_volume` reads (NIfTI, NRRD, MetaImage, a DICOM series folder;
    the metadata's ``series`` picks one series of a DICOM folder of the image).
    """
    sid = record["subject_id"]
    if record["layout"] == "totalsegmentator":
        from agg2exp_lightning.labels import THORAX_CLASSES

        names = class_names if class_names is not None else (THORAX_CLASSES if num_classes == len(THORAX_CLASSES) else None)
        if names is None:
            raise DataError(
                f"subject {sid}: TotalSegmentator structures merge into the {len(THORAX_CLASSES)} thorax labels, "
                f"but the model expects {num_classes} classes"
            )
        return load_totalsegmentator_subject(record["labels"], mapping, class_names=names)
    series = (record.get("metadata") or {}).get("series") or None
    ct, affine = read_volume(record["image"], what=f"image of subject {sid}", series=series)
    ct = check_ct(ct, what=f"image of subject {sid}", path=record["image"])
    if record.get("labels") is None:
        return ct, None, affine
    labels, label_affine = read_volume(record["labels"], what=f"labels of subject {sid}")
    check_same_grid(ct.shape, affine, labels.shape, label_affine, what=f"labels of subject {sid} ({record['labels']})")
    if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(
            f"labels of subject {sid}: {record['labels']} must hold integer label ids in [0, {num_classes}), "
            f"found values in [{labels.min()}, {labels.max()}]"
        )
    return ct, labels.astype(np.uint8), affine


class LoadSubjectd(Transform):
    """Dict transform: a :class:`SubjectRecord` dict -> ``image`` / ``label`` MetaTensors ``[1, X, Y, Z]``.

    Keeps ``subject_id`` and ``metadata`` in the dict so they travel with each sample. A MONAI
    ``Transform`` (deterministic), so that ``CacheDataset`` caches the pipeline from here up to the first
    random transform; a plain callable would end the cached part before it, and every step would read the
    NIfTI files again.
    """

    def __init__(self, mapping: Mapping[str, Sequence[str]], num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.mapping = dict(mapping)
        self.num_classes = num_classes
        self.class_names = None if class_names is None else list(class_names)

    def __call__(self, record: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        ct, labels, affine = load_subject_arrays(record, self.mapping, self.num_classes, self.class_names)
        aff = torch.as_tensor(affine, dtype=torch.float64)
        out: dict[Hashable, Any] = {"subject_id": record["subject_id"], "metadata": dict(record["metadata"])}
        # MONAI's loader keys: the scan's own grid, to write predictions back onto it
        grid = {"original_affine": aff.clone(), "spatial_shape": torch.tensor(ct.shape[:3])}
        out["image"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(ct))[None], affine=aff.clone(), meta=grid)
        if labels is not None:
            out["label"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(labels)).float()[None], affine=aff.clone())
        return out


def preprocessing(
    mapping: Mapping[str, Sequence[str]], num_classes: int, spacing: Sequence[float], *, with_labels: bool = True,
    crop_to_body: bool = True, class_names: Sequence[str] | None = None, extra_keys: Sequence[str] = (),
) -> list:
    """Deterministic transforms (cacheable): load, RAS, resample, window, crop to the body (unless
    ``crop_to_body=False``: the published evaluation explained whole, uncropped volumes)."""
    from monai import transforms as T

    # extra_keys: label-like stacks added after loading (e.g. the audit's extra masks), resampled with nearest neighbours
    keys = (["image", "label"] if with_labels else ["image"]) + list(extra_keys)
    modes = (("bilinear", "nearest") if with_labels else ("bilinear",)) + ("nearest",) * len(extra_keys)
    return [
        LoadSubjectd(mapping, num_classes, class_names),
        T.Orientationd(keys=keys, axcodes="RAS", labels=_RAS_LABELS),
        T.Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes),
        T.ScaleIntensityRanged(keys="image", a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        *([T.CropForegroundd(keys=keys, source_key="image", select_fn=_is_body, margin=2, allow_smaller=True)] if crop_to_body else []),
        T.EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True),
    ]


def training_augmentation(roi_size: Sequence[int], samples_per_volume: int, pos: float, neg: float) -> list:
    """Random transforms: pad to the crop size, crops by positive/negative label, intensity jitter."""
    from monai import transforms as T

    keys = ["image", "label"]
    return [
        T.SpatialPadd(keys=keys, spatial_size=tuple(roi_size)),
        T.RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=tuple(roi_size),
            pos=pos,
            neg=neg,
            num_samples=samples_per_volume,
            image_key="image",
            image_threshold=0.0,
        ),
        T.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        T.RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
    ]

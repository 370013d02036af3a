"""LightningDataModule over a TotalSegmentator v2 root or a manifest (the synthetic cohort by default)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from agg2exp_lightning.data.subjects import SubjectRecord, discover_records, select_split
from agg2exp_lightning.data.transforms import preprocessing, training_augmentation
from agg2exp_lightning.errors import DataError, find_data_error, root_cause
from agg2exp_lightning.labels import NUM_CLASSES, load_structure_mapping
from agg2exp_lightning.utils import plain_tensor, positive_int

log = logging.getLogger(__name__)


def _unusable_subjects(items: list[dict[str, Any]], preprocess: Any, where: str) -> DataError | None:
    """A DataError listing every item that ``preprocess`` fails on (subject and reason), or None if none fails."""
    problems = []
    for item in items:
        try:
            preprocess(dict(item))
        except Exception as err:
            found = find_data_error(err)
            if found is not None:
                problems.append(str(found))
            else:
                cause = root_cause(err)  # MONAI wraps a transform's error in a RuntimeError
                problems.append(f"subject {item['subject_id']}: {type(cause).__name__}: {cause}")
    if not problems:
        return None
    listed = "\n".join(f"  - {p}" for p in problems)
    return DataError(f"{where}: {len(problems)} of {len(items)} subjects cannot be used:\n{listed}")


class ThoraxDataModule(pl.LightningDataModule):
    """Thorax CT scans with 17-label segmentations.

    Args:
        data_root: a TotalSegmentator v2 root (``sXXXX/`` folders + ``meta.csv``) or a manifest CSV
            (columns ``image``, ``label``, metadata).
        mapping_file: YAML of label -> TotalSegmentator structures (default: the shipped mapping).
        spacing: resampling spacing in mm (paper: 1.5).
        roi_size: training crop size (every side divisible by 32 for Swin-UNETR).
        batch_size: training batch size (volumes x samples_per_volume crops per step).
        samples_per_volume: random crops drawn from each training volume.
        pos_neg: relative frequency of crops centred on foreground / background voxels.
        num_workers: DataLoader workers.
        cache_rate: fraction of the preprocessed volumes kept in memory.
        synthetic_cohort: when given and ``data_root`` is a folder without ``meta.csv`` (not a manifest file), a synthetic cohort is
            generated there first with these keyword arguments to
            :func:`agg2exp_lightning.data.synthetic.generate_cohort` (e.g. ``{"n_subjects": 36, "seed": 0}``).
        train_split / val_split / test_split: split names in ``meta.csv``.
        max_val_subjects: cap on validation scans (None: all).
        crop_to_body: crop every volume to the body (``False``: whole volumes, as the published
            evaluation used; see :mod:`agg2exp_lightning.protocols`).

    Example:
        >>> dm = ThoraxDataModule("data/synthetic_thorax", spacing=(5, 5, 5), roi_size=(64, 64, 64))
    """

    def __init__(
        self,
        data_root: str = "data/synthetic_thorax",
        mapping_file: str | None = None,
        spacing: Sequence[float] = (1.5, 1.5, 1.5),
        roi_size: Sequence[int] = (96, 96, 96),
        batch_size: int = 2,
        samples_per_volume: int = 1,
        pos_neg: Sequence[float] = (1.0, 1.0),
        num_workers: int = 0,
        cache_rate: float = 1.0,
        synthetic_cohort: dict[str, Any] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        max_val_subjects: int | None = None,
        crop_to_body: bool = True,
    ) -> None:
        super().__init__()
        if len(spacing) != 3 or any(float(s) <= 0 for s in spacing):
            raise ValueError(f"Expected argument `spacing` to be three positive numbers (mm), but got {spacing!r}")
        if len(roi_size) != 3:
            raise ValueError(f"Expected argument `roi_size` to be three integers, but got {roi_size!r}")
        for s in roi_size:
            positive_int("roi_size", s)
        positive_int("batch_size", batch_size)
        positive_int("samples_per_volume", samples_per_volume)
        if not 0.0 <= cache_rate <= 1.0:
            raise ValueError(f"Expected argument `cache_rate` in [0, 1], but got {cache_rate!r}")
        self.save_hyperparameters()
        self.data_root = Path(data_root)
        self.mapping = load_structure_mapping(mapping_file)
        self.records: list[SubjectRecord] = []
        self.datasets: dict[str, Any] = {}

    # -- set-up -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        cohort = self.hparams.synthetic_cohort
        # a manifest (a CSV/TSV file) is data to read, never a place to generate the demo cohort into
        manifest = self.data_root.is_file() or self.data_root.suffix.lower() in (".csv", ".tsv")
        if cohort is not None and not manifest and not (self.data_root / "meta.csv").exists():
            from agg2exp_lightning.data.synthetic import generate_cohort

            log.info("generating the synthetic thorax cohort in %s", self.data_root)
            generate_cohort(self.data_root, **cohort)

    def _dataset(self, records: list[SubjectRecord], train: bool, split: str = ""):
        from monai.data import CacheDataset
        from monai.transforms import Compose

        steps = preprocessing(self.mapping, NUM_CLASSES, self.hparams.spacing, with_labels=all(r.labels for r in records),
                              crop_to_body=self.hparams.get("crop_to_body", True))
        n_deterministic = len(steps)
        if train:
            steps += training_augmentation(self.hparams.roi_size, self.hparams.samples_per_volume, *self.hparams.pos_neg)
        items = [dataclasses.asdict(r) for r in records]
        try:
            return CacheDataset(items, Compose(steps), cache_rate=self.hparams.cache_rate, num_workers=0, progress=False)
        except Exception as err:
            # Name every subject that cannot be used, not only the first, so one run lists all to fix.
            problem = _unusable_subjects(items, Compose(steps[:n_deterministic]), f"{self.data_root}, split {split!r}")
            if problem is None:  # every subject loads: not a data problem
                raise
            raise problem from err

    def setup(self, stage: str | None = None) -> None:
        if not self.records:
            self.records = discover_records(self.data_root)
        hp = self.hparams
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            if split in self.datasets:
                continue
            name = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}[split]
            records = select_split(self.records, name, source=self.data_root)
            if split == "val" and hp.max_val_subjects:
                records = records[: hp.max_val_subjects]
            if split == "train" and not all(r.labels for r in records):
                raise DataError(f"{self.data_root}: every training subject needs labels")
            log.info("%s split: %d subjects", name, len(records))
            self.datasets[split] = self._dataset(records, train=split == "train", split=name)

    def whole_volume_dataset(self, split: str = "train", max_subjects: int | None = None):
        """Whole preprocessed volumes of a split (no random crops), e.g. a reference set for anomaly detectors.

        Args:
            split: ``train``, ``val`` or ``test`` (mapped through ``train_split`` / ``val_split`` / ``test_split``).
            max_subjects: the first this many subjects by id (None: all).
        """
        key = (split, max_subjects)
        cache = self.__dict__.setdefault("_whole_volume", {})
        if key not in cache:
            if not self.records:
                self.records = discover_records(self.data_root)
            name = {"train": self.hparams.train_split, "val": self.hparams.val_split, "test": self.hparams.test_split}.get(split, split)
            records = sorted(select_split(self.records, name, source=self.data_root), key=lambda r: r.subject_id)
            cache[key] = self._dataset(records[:max_subjects], train=False, split=name)
        return cache[key]

    def label_voxel_counts(self, split: str = "train", num_classes: int = NUM_CLASSES) -> Tensor:
        """``[C]`` voxels of each label over a split's scans after preprocessing (no augmentation).

        Reads every scan of the split once without caching it (the module's own datasets are left
        alone); :func:`agg2exp_lightning.class_weights.class_weights` turns the counts into loss weights.

        Args:
            split: ``train``, ``val`` or ``test`` (mapped through ``train_split`` / ``val_split`` / ``test_split``).
            num_classes: ``C``; labels ``>= C`` are not counted.

        Returns:
            float64 counts.

        Raises:
            DataError: the split has no subjects, or a subject cannot be read.
        """
        from monai.transforms import Compose

        if not self.records:
            self.records = discover_records(self.data_root)
        name = {"train": self.hparams.train_split, "val": self.hparams.val_split, "test": self.hparams.test_split}.get(split, split)
        chosen = select_split(self.records, name, source=self.data_root)
        pipeline = Compose(preprocessing(self.mapping, num_classes, self.hparams.spacing))
        counts = torch.zeros(num_classes, dtype=torch.float64)
        for record in chosen:
            label = torch.as_tensor(plain_tensor(pipeline(dataclasses.asdict(record))["label"]))
            counts += torch.bincount(label.long().flatten(), minlength=num_classes)[:num_classes].double()
        log.info("label voxel counts over %d %s scans: %s", len(chosen), name, counts.long().tolist())
        return counts

    # -- loaders ------------------------------------------------------------------------------
    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        from monai.data import list_data_collate

        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=list_data_collate,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", 1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", 1, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", 1, shuffle=False)

"""ExactResume: every training epoch draws its randomness from (seed, epoch), so a resumed run repeats it exactly."""
from __future__ import annotations

import logging
import os
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

log = logging.getLogger(__name__)


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int, int, int]:
    """Four independent 32-bit seeds (torch, numpy, python, data transforms) for one epoch of one run."""
    state = np.random.SeedSequence([int(seed) % 2**32, int(epoch)]).generate_state(4)
    return tuple(int(s) for s in state)  # type: ignore[return-value]


def _datasets(loaders: Any) -> list[Any]:
    """The datasets behind a loader, a list/dict of loaders, a Subset or a ConcatDataset."""
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return [d for v in loaders.values() for d in _datasets(v)]
    if isinstance(loaders, (list, tuple)):
        return [d for v in loaders for d in _datasets(v)]
    dataset = getattr(loaders, "dataset", None)
    if dataset is not None and hasattr(loaders, "batch_size"):  # a DataLoader
        return _datasets_of(dataset)
    return _datasets_of(loaders)


def _datasets_of(dataset: Any) -> list[Any]:
    if hasattr(dataset, "datasets"):  # ConcatDataset
        return [d for inner in dataset.datasets for d in _datasets_of(inner)]
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # Subset
        return _datasets_of(dataset.dataset)
    return [dataset]


def _num_workers(loaders: Any) -> int:
    if isinstance(loaders, dict):
        return max([_num_workers(v) for v in loaders.values()] or [0])
    if isinstance(loaders, (list, tuple)):
        return max([_num_workers(v) for v in loaders] or [0])
    return int(getattr(loaders, "num_workers", 0) or 0)


class ExactResume(Callback):
    """Seed each training epoch from ``(seed, epoch)``: a run killed at any moment and resumed from the
    checkpoint written at the end of its last complete epoch ends with exactly the weights of a run that
    was never interrupted.

    At the start of every training epoch it seeds torch (hence the DataLoader's shuffling, which draws from
    torch's global generator when the loader is iterated), numpy, python's ``random`` and the random
    transforms of the training datasets (MONAI's ``Randomizable.set_random_state``; MONAI otherwise seeds
    them from the operating system). Randomness spent elsewhere (validation, monitors, a partial epoch that
    was killed) no longer shifts the next epoch. The seed is stored in checkpoints, so a resumed run keeps
    its seed even where ``seed_everything`` drew a random one.

    Exactness holds for checkpoints written at the end of a training epoch (``last.ckpt`` of the configs),
    with ``num_workers=0``: persistent DataLoader workers keep their own copies of the transforms, which
    no callback in the main process can reseed (a warning says so).

    Args:
        seed: the run's seed (None: ``PL_GLOBAL_SEED`` set by ``seed_everything``, else drawn once per run).

    Example:
        >>> trainer = pl.Trainer(callbacks=[ExactResume(seed=0)])
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Expected argument `seed` to be an integer or None, but got {seed!r}")
        self.seed = seed
        self._warned_workers = False
        self._fresh_fit = True

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is None:
            env = os.environ.get("PL_GLOBAL_SEED")
            self.seed = int(env) if env is not None else random.SystemRandom().randrange(2**32)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fresh_fit = True

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_torch, seed_numpy, seed_python, seed_data = epoch_seeds(self.seed, trainer.current_epoch)
        torch.manual_seed(seed_torch)  # also every CUDA device
        np.random.seed(seed_numpy)
        random.seed(seed_python)
        loaders = trainer.train_dataloader
        for dataset in _datasets(loaders):
            transform = getattr(dataset, "transform", None)
            if hasattr(transform, "set_random_state"):
                transform.set_random_state(seed=seed_data)
        if self._fresh_fit:
            # In the first epoch of a fit (epoch 0, or the epoch a resumed run starts with) Lightning created the
            # loader's iterator, which draws the shuffling seed and prefetches a batch, before this hook; later
            # epochs create it after. Create it again, now that everything is seeded.
            self._fresh_fit = False
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if fetcher is not None and hasattr(fetcher, "setup"):
                iter(fetcher)
            else:
                log.warning("ExactResume: cannot restart this Lightning version's data fetcher; a resumed run "
                            "may not repeat the uninterrupted one exactly")
        if _num_workers(loaders) > 0 and not self._warned_workers and trainer.is_global_zero:
            self._warned_workers = True
            log.warning(
                "ExactResume: the training DataLoader uses worker processes; their random transforms are not "
                "reseeded per epoch, so a resumed run may not repeat the uninterrupted one exactly "
                "(num_workers=0 makes it exact)"
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        stored = state_dict.get("seed")
        if stored is not None and stored != self.seed:
            log.info("ExactResume: continuing with the checkpoint's seed %s (this run was given %s)", stored, self.seed)
            self.seed = int(stored)

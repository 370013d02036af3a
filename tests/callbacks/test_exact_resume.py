"""ExactResume's epoch seeding on its own: same (seed, epoch), same draws; another epoch or seed, other draws."""
from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandGaussianNoise
from torch.utils.data import DataLoader, Dataset

from agg2exp_lightning.callbacks.exact_resume import ExactResume, epoch_seeds


class _Noisy(Dataset):
    """Eight items, each drawn through a MONAI random transform (as the training datasets are)."""

    def __init__(self) -> None:
        self.transform = Compose([RandGaussianNoise(prob=1.0, std=1.0)])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(torch.full((1, 2), float(i)))


class _Fetcher:
    def __init__(self) -> None:
        self.restarts = 0

    def setup(self, *args, **kwargs) -> None:  # what Lightning's data fetchers have
        pass

    def __iter__(self):
        self.restarts += 1
        return self

    def __next__(self):
        raise StopIteration


def _trainer(epoch: int, loader, fetcher: _Fetcher | None = None) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, train_dataloader=loader, is_global_zero=True,
                           fit_loop=SimpleNamespace(_data_fetcher=fetcher or _Fetcher()))


def _draws(loader) -> dict[str, list]:
    """What an epoch draws: torch, numpy and python generators, the loader's order and the transforms' noise."""
    return {
        "torch": torch.rand(4).tolist(),
        "numpy": np.random.rand(4).tolist(),
        "python": [random.random() for _ in range(4)],
        "batches": [b.flatten().tolist() for b in loader],  # shuffled order + MONAI noise
    }


def _epoch(callback: ExactResume, epoch: int, loader) -> dict[str, list]:
    callback.on_fit_start(None, None)
    callback.on_train_epoch_start(_trainer(epoch, loader), None)
    return _draws(loader)


def test_same_seed_and_epoch_give_the_same_draws_whatever_was_drawn_before():
    loader = DataLoader(_Noisy(), batch_size=4, shuffle=True)
    callback = ExactResume(seed=7)
    first = _epoch(callback, 3, loader)
    torch.rand(100), np.random.rand(100), random.random()  # randomness spent elsewhere (validation, monitors)
    again = _epoch(ExactResume(seed=7), 3, DataLoader(_Noisy(), batch_size=4, shuffle=True))  # a resumed run
    assert again == first


@pytest.mark.parametrize(("seed", "epoch"), [(7, 4), (8, 3)])
def test_another_epoch_or_seed_gives_other_draws_in_every_generator(seed, epoch):
    loader = DataLoader(_Noisy(), batch_size=4, shuffle=True)
    reference = _epoch(ExactResume(seed=7), 3, loader)
    other = _epoch(ExactResume(seed=seed), epoch, loader)
    for source in ("torch", "numpy", "python", "batches"):
        assert other[source] != reference[source], source


def test_epoch_seeds_are_four_distinct_32_bit_seeds_fixed_by_seed_and_epoch():
    seeds = epoch_seeds(0, 0)
    assert seeds == epoch_seeds(0, 0) and len(set(seeds)) == 4
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    grid = {epoch_seeds(seed, epoch) for seed in (0, 1, 2**32 + 5) for epoch in range(50)}
    assert len(grid) == 150  # no two (seed, epoch) pairs share their seeds
    # the epoch and the seed are not interchangeable: (1, 2) and (2, 1) differ
    assert epoch_seeds(1, 2) != epoch_seeds(2, 1)


def test_the_first_epoch_of_a_fit_restarts_the_loader_iterator_once():
    loader = DataLoader(_Noisy(), batch_size=4)
    fetcher = _Fetcher()
    callback = ExactResume(seed=1)
    callback.on_fit_start(None, None)
    for epoch in (5, 6, 7):
        callback.on_train_epoch_start(_trainer(epoch, loader, fetcher), None)
    assert fetcher.restarts == 1  # only the epoch whose iterator Lightning made before this hook
    callback.on_fit_start(None, None)  # a second fit (e.g. resumed in the same process)
    callback.on_train_epoch_start(_trainer(8, loader, fetcher), None)
    assert fetcher.restarts == 2


def test_worker_processes_are_warned_about_once(caplog):
    loader = DataLoader(_Noisy(), batch_size=4, num_workers=2)  # never iterated here
    callback = ExactResume(seed=1)
    callback.on_fit_start(None, None)
    with caplog.at_level(logging.WARNING, logger="agg2exp_lightning.callbacks.exact_resume"):
        callback.on_train_epoch_start(_trainer(0, loader), None)
        callback.on_train_epoch_start(_trainer(1, loader), None)
    assert sum("worker processes" in r.getMessage() for r in caplog.records) == 1


def test_the_seed_comes_from_the_checkpoint_or_the_global_seed(monkeypatch):
    callback = ExactResume(seed=3)
    assert callback.state_dict() == {"seed": 3}
    callback.load_state_dict({"seed": 11})
    assert callback.seed == 11  # a resumed run keeps the seed it started with
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    unseeded = ExactResume()
    unseeded.setup(None, None, "fit")
    assert unseeded.seed == 42
    monkeypatch.delenv("PL_GLOBAL_SEED")
    drawn = ExactResume()
    drawn.setup(None, None, "fit")
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**32


@pytest.mark.parametrize("seed", [True, "3", 1.5])
def test_a_seed_that_is_not_an_integer_is_refused(seed):
    with pytest.raises(ValueError, match="`seed` to be an integer or None"):
        ExactResume(seed=seed)

"""The training loader of a single process: an epoch's order and every sample's augmentation are
functions of (run seed, epoch, sample), never of a running random stream, so that a run stopped
anywhere and resumed draws exactly what the uninterrupted run drew, whatever ``num_workers``.

Lightning resumes a loader mid-epoch when the loader has ``state_dict`` / ``load_state_dict``:
torchdata's ``StatefulDataLoader`` provides them, storing the position reached in the epoch;
``EpochShuffle`` adds the epoch to that state (Lightning sets it with ``set_epoch`` at every
epoch start, as for torch's ``DistributedSampler``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSeeded", "EpochShuffle", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` in ``epoch`` of a run seeded ``seed`` (SeedSequence
    mixes the three, so nearby keys give unrelated streams)."""
    key = [seed % 2**63, epoch, index]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


class EpochShuffle(Sampler[tuple[int, int]]):
    """A random order of ``size`` samples per epoch, drawn from ``(seed, epoch)``; yields
    ``(epoch, index)`` keys for ``EpochSeeded``.

    The order is drawn at the first sample taken, so the epoch Lightning sets after creating the
    loader's iterator is the one used.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return _EpochShuffleIterator(self)


class _EpochShuffleIterator(Iterator[tuple[int, int]]):
    """One pass of an ``EpochShuffle``; its state (epoch, samples taken) is what
    ``StatefulDataLoader`` stores to resume the pass."""

    def __init__(self, sampler: EpochShuffle) -> None:
        self.sampler = sampler
        self.epoch: int | None = None
        self.taken = 0
        self.order: list[int] | None = None

    def __iter__(self) -> _EpochShuffleIterator:
        return self

    def __next__(self) -> tuple[int, int]:
        if self.order is None:
            if self.epoch is None:
                self.epoch = self.sampler.epoch
            generator = torch.Generator().manual_seed(self.sampler.seed + self.epoch)
            self.order = torch.randperm(self.sampler.size, generator=generator).tolist()
        if self.taken >= len(self.order):
            raise StopIteration
        self.taken += 1
        return self.epoch, self.order[self.taken - 1]  # type: ignore[return-value]

    def state_dict(self) -> dict[str, int]:
        epoch = self.sampler.epoch if self.epoch is None else self.epoch
        return {"epoch": epoch, "taken": self.taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.taken, self.order = int(state["epoch"]), int(state["taken"]), None


class EpochSeeded(Dataset):
    """``dataset`` indexed by ``(epoch, index)``: its albumentations pipeline is seeded with
    ``sample_seed(seed, epoch, index)`` before sample ``index`` is read, in whichever process
    reads it. Other attributes read through to ``dataset``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(sample_seed(self.seed, epoch, index))
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

"""Feeding a recipe: deterministic batches of (epoch, index) keys and per-sample views.

The batch sampler decides *which* samples form each step from (seed, epoch)
alone; the dataset decides *what* each sample looks like from (seed, epoch,
index) alone. Neither depends on worker identity, so ``--workers`` never
changes results, and a run resumed at step S sees exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from clipsan.data.transforms import to_model_pixels
from clipsan.seeding import derive_seed, sample_generator, sample_rng


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(derive_seed(seed, epoch, "order")).shuffle(order)
    return order


def steps_per_epoch(n: int, global_batch: int) -> int:
    # The last incomplete batch is dropped: contrastive losses want full batches,
    # and data-parallel shards must have equal sizes.
    return max(1, n // global_batch)


EpochOrder = Callable[[int], list[int]]  # epoch -> its global batches, concatenated (per_epoch * batch indices)


class EpochBatchSampler(Sampler):
    """Yields this rank's share of every global batch, from ``start_step`` to the end of training.

    An epoch's batches are consecutive slices of its order: the seeded permutation, or the one
    ``epoch_order`` gives (a recipe that composes its own batches, e.g. CleanerCLIP's).
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        total_steps: int,
        *,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_order: EpochOrder | None = None,
    ):
        self.n, self.batch, self.seed = n, min(global_batch, n), seed
        self.total_steps, self.start_step = total_steps, start_step
        self.rank, self.world_size = rank, world_size
        self.per_epoch = steps_per_epoch(n, self.batch)
        self.local = self.batch // world_size
        self.epoch_order = epoch_order or (lambda epoch: epoch_permutation(self.n, self.seed, epoch))

    def __len__(self) -> int:
        return self.total_steps - self.start_step

    def __iter__(self):
        cached_epoch, order = -1, []
        for step in range(self.start_step, self.total_steps):
            epoch, within = divmod(step, self.per_epoch)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self.epoch_order(epoch)
            start = within * self.batch + self.rank * self.local
            yield [(epoch, index) for index in order[start : start + self.local]]


@dataclass
class Sample:
    """One clean pair as a recipe sees it, with its own random streams."""

    pixels: torch.Tensor  # (3, S, S) in [0, 1]
    image: object  # the decoded PIL image, for augmentations that want it
    caption: str
    index: int
    epoch: int
    seed: int

    def rng(self, stream: str) -> random.Random:
        return sample_rng(self.seed, self.epoch, self.index, stream)

    def generator(self, stream: str) -> torch.Generator:
        return sample_generator(self.seed, self.epoch, self.index, stream)


class RecipeSamples(Dataset):
    """Maps (epoch, index) keys to the tensors a recipe's loss needs."""

    def __init__(self, captions, recipe, image_size: int, tokenize: Callable[[list[str]], torch.Tensor], seed: int):
        self.captions, self.recipe = captions, recipe
        self.image_size, self.tokenize, self.seed = image_size, tokenize, seed

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, key):
        epoch, index = key
        image, caption = self.captions.load(index)
        if image is None:
            return None  # corrupt image: dropped and counted by the collate
        sample = Sample(to_model_pixels(image, self.image_size), image, caption, index, epoch, self.seed)
        views = self.recipe.views(sample)
        out = {"index": torch.tensor(index)}
        for name, value in views.items():
            out[name] = self.tokenize([value])[0] if isinstance(value, str) else value
        return out


def collate(items: list) -> dict:
    good = [item for item in items if item is not None]
    batch: dict = {"n_corrupt": len(items) - len(good)}
    if good:
        for name in good[0]:
            batch[name] = torch.stack([item[name] for item in good])
    return batch


def build_loader(samples: Dataset, sampler: EpochBatchSampler, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        samples,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


@dataclass
class SkipCounts:
    """What the data pipeline could not use: index-time skips plus corrupt images met while training."""

    counts: dict = field(default_factory=dict)

    def add(self, name: str, n: int) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + n

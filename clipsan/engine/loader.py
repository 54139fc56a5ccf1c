"""Feeding a recipe: deterministic batches of (epoch, index) keys and per-sample views.

The batch sampler decides *which* samples form each step from (seed, epoch)
alone; the dataset decides *what* each sample looks like from (seed, epoch,
index) alone. Neither depends on worker identity, so ``--workers`` never
changes results, and a run resumed at step S sees exactly the batches an
uninterrupted run would.

Pixels travel as uint8 (a quarter of float32's bytes through worker pipes, pinned
memory and the host-to-device copy) and become floats in [0, 1] on the device
(``to_device``): k/255 computed there is the same float the workers would have made.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from clipsan.config.runtime import resolve_workers
from clipsan.data.tokens import drop_common_padding, fit_caption
from clipsan.data.transforms import to_model_uint8
from clipsan.errors import UserError
from clipsan.seeding import derive_seed, sample_generator, sample_rng

SUBSTITUTE_DRAWS = 16  # random tries for a readable sample before walking the set in order


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

    pixels8: torch.Tensor  # (3, S, S) uint8, as decoded: what a view ships when it keeps the image as is
    image: object  # the decoded PIL image, for augmentations that want it
    caption: str
    index: int
    epoch: int
    seed: int

    @functools.cached_property
    def pixels(self) -> torch.Tensor:
        """(3, S, S) float in [0, 1], for views that compute on the image."""
        return pixels_to_float(self.pixels8)

    def rng(self, stream: str) -> random.Random:
        return sample_rng(self.seed, self.epoch, self.index, stream)

    def generator(self, stream: str) -> torch.Generator:
        return sample_generator(self.seed, self.epoch, self.index, stream)


def pixels_to_float(pixels8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (k / 255, the same float wherever it is computed)."""
    return pixels8.float().div_(255.0)


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
        unreadable = image is None  # corrupt, truncated or over the pixel limit: counted as corrupt_image
        if unreadable:
            index, image, caption = self._substitute(epoch, index)
        sample = Sample(to_model_uint8(image, self.image_size), image, caption, index, epoch, self.seed)
        views = self.recipe.views(sample)
        out = {"index": torch.tensor(index), "n_corrupt": int(unreadable)}
        out["text_columns"] = tuple(name for name, value in views.items() if isinstance(value, str))
        for name, value in views.items():
            out[name] = self.tokenize([fit_caption(value, self.tokenize)])[0] if isinstance(value, str) else value
        return out

    def _substitute(self, epoch: int, index: int):
        """Another sample, with a readable image, in place of one whose image is not.

        Batches stay full (a contrastive loss is defined over the batch, and data-parallel
        shards stay equal), and the choice depends on (seed, epoch, index) only, so it does
        not change with --workers or on resume. The substitute is that sample as itself
        (its own index, views and poison plan). Random draws first; a set that is nearly
        all unreadable is then walked from the last draw (it has one readable image: the
        dataset's opener checks).
        """
        n = len(self.captions)
        rng = sample_rng(self.seed, epoch, index, "substitute")
        candidate = index
        for attempt in range(SUBSTITUTE_DRAWS + n):
            candidate = rng.randrange(n) if attempt < SUBSTITUTE_DRAWS else (candidate + 1) % n
            image, caption = self.captions.load(candidate)
            if image is not None:
                return candidate, image, caption
        raise UserError(f"{getattr(self.captions, 'root', 'the training data')}: no readable image left to train on")


def collate(items: list) -> dict:
    # Every slot holds a sample (unreadable images are substituted); n_corrupt counts the substitutions.
    batch: dict = {"n_corrupt": sum(item.pop("n_corrupt") for item in items)}
    text_columns = {name for item in items for name in item.pop("text_columns", ())}
    for name in items[0]:
        batch[name] = torch.stack([item[name] for item in items])
    # Captions travel as far as the batch's longest goes (the text tower's cost follows the width).
    return drop_common_padding(batch, text_columns)


def build_loader(samples: Dataset, sampler: EpochBatchSampler, workers: int | None, pin_memory: bool) -> DataLoader:
    workers = resolve_workers(workers)
    return DataLoader(
        samples,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch's tensors on ``device``; uint8 tensors are pixels and arrive as floats in [0, 1].

    From pinned memory the copies are asynchronous on CUDA; scaling runs on the
    device, after the (4x smaller) uint8 copy.
    """
    non_blocking = device.type == "cuda"
    moved = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=non_blocking)
            if value.dtype == torch.uint8:
                value = pixels_to_float(value)
        moved[key] = value
    return moved


@dataclass
class SkipCounts:
    """What the data pipeline could not use: index-time skips plus corrupt images met while training."""

    counts: dict = field(default_factory=dict)

    def add(self, name: str, n: int) -> None:
        if n:
            self.counts[name] = self.counts.get(name, 0) + n

"""Probe images for a scan: a user's folder (images only) or the synthetic world."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from clipsan.config import WorldConfig
from clipsan.data import world
from clipsan.errors import UserError
from clipsan.seeding import derive_seed


@dataclass
class Probes:
    images: torch.Tensor  # (N, 3, S, S) in [0, 1] at the model's input size
    source: str  # "world" | "captions" | "labelled"
    data: str | None  # the --data folder, if any
    classnames: list[str] | None  # class names to name the target with (world / labelled set)
    skipped: int = 0  # unreadable images passed over

    @property
    def synthetic(self) -> bool:
        return self.source == "world"

    def describe(self) -> str:
        if self.synthetic:
            return f"{len(self.images)} synthetic world images (no --data given)"
        text = f"{len(self.images)} images from {self.data} ({'labelled set' if self.source == 'labelled' else 'caption dataset'})"
        return text + (f"; {self.skipped} unreadable skipped" if self.skipped else "")


def world_probes(n: int, size: int, seed: int) -> Probes:
    # Rendered at the model's input size (the world draws at any side; a 64-px model is trained
    # on 64-px renders), from a stream of its own, so probes are not the lab's training images.
    config = WorldConfig(image_size=size)
    images = world.probe_images(n, seed=derive_seed("scan-probes", seed) % (2**31), config=config)
    return Probes(images, "world", None, world.classnames(config))


def folder_probes(data: str, n: int, size: int, seed: int, **reading) -> Probes:
    """Images of a caption dataset or a labelled set (whichever `data` is); captions and labels unused.

    ``reading``: the data readers' max_image_pixels and allow_outside_root.
    """
    dataset, source, classnames = _open_either(data, **reading)
    return dataset_probes(dataset, source, str(data), classnames, n, size, seed)


def dataset_probes(dataset, source: str, data: str, classnames: list[str] | None, n: int, size: int, seed: int) -> Probes:
    """Up to ``n`` readable images of an open dataset (``load(i) -> (image, _)``): a scan's --data, or
    the pairs purify held out."""
    from clipsan.data.transforms import to_model_pixels

    # A seeded shuffle (labelled sets are sorted by class); unreadable images are passed over.
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(derive_seed("scan-probes", seed)))
    images, skipped = [], 0
    for index in order.tolist():
        image, _ = dataset.load(index)
        if image is None:
            skipped += 1
            continue
        images.append(to_model_pixels(image, size))
        if len(images) == n:
            break
    if len(images) < 2:
        raise UserError(f"{data}: fewer than 2 readable images ({skipped} unreadable); a scan needs clean probe images")
    return Probes(torch.stack(images), source, data, classnames, skipped)


def _open_either(data: str, **reading):
    from clipsan.data.captions import open_caption_dataset
    from clipsan.data.labelled import open_labelled_dataset

    try:
        return open_caption_dataset(data, **reading), "captions", None
    except UserError as caption_error:
        try:
            labelled = open_labelled_dataset(data, **reading)
        except UserError as labelled_error:
            raise UserError(f"{data}: neither a caption dataset ({_reason(caption_error)}) nor a labelled set ({_reason(labelled_error)})") from None
        return labelled, "labelled", list(labelled.classnames)


def _reason(err: UserError) -> str:
    text = str(err)
    head, sep, tail = text.partition(": ")
    return tail if sep and Path(head).name else text


def load_probes(data: str | None, n: int, size: int, seed: int, **reading) -> Probes:
    return world_probes(n, size, seed) if data is None else folder_probes(data, n, size, seed, **reading)

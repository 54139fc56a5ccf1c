"""A labelled set as batches of model-size pixels; corrupt images are counted, not fatal."""

from __future__ import annotations

from typing import Any

import torch


class ModelPixels(torch.utils.data.Dataset):
    """A labelled dataset as (pixels (3, S, S) in [0, 1] or None if corrupt, label, index)."""

    def __init__(self, dataset: Any, image_size: int):
        self.dataset = dataset
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        from clipsan.data.transforms import to_model_pixels

        image, label = self.dataset.load(index)
        pixels = None if image is None else to_model_pixels(image, self.image_size)
        return pixels, int(label), int(index)


def collate_labelled(items: list[tuple[torch.Tensor | None, int, int]]) -> dict[str, Any]:
    """Stack the readable images; count the corrupt ones (module level so spawned workers can pickle it)."""
    good = [item for item in items if item[0] is not None]
    return {
        "images": torch.stack([item[0] for item in good]) if good else None,
        "labels": torch.tensor([item[1] for item in good], dtype=torch.long),
        "ids": torch.tensor([item[2] for item in good], dtype=torch.long),
        "corrupt": len(items) - len(good),
    }


def labelled_batches(dataset: Any, image_size: int, batch_size: int, workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches in dataset order: {"images" (B, 3, S, S) in [0, 1] or None, "labels", "ids", "corrupt"}."""
    return torch.utils.data.DataLoader(
        ModelPixels(dataset, image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_labelled,
        pin_memory=pin_memory,
    )

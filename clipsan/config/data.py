"""The clean image-caption data a training command reads (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from clipsan.config.checks import Checked, checked, count
from clipsan.config.limits import MAX_IMAGE_PIXELS, PILLOW_REFUSES_ABOVE


def max_image_pixels_field() -> object:
    """Larger images are refused from their header (clipsan.config.limits); Pillow refuses what is above its own limit."""
    return checked(MAX_IMAGE_PIXELS, flag="--max-image-pixels", what="a pixel count", low=1, high=PILLOW_REFUSES_ABOVE)


@dataclass(frozen=True)
class CaptionData(Checked):
    """Clean image-caption pairs: a CSV/TSV manifest, webdataset shards or img2dataset files."""

    path: str = checked(flag="--data", path="dir")
    image_key: str | None = None  # manifest columns (default: detected)
    caption_key: str | None = None
    delimiter: str | None = None
    limit: int | None = count(None, "--limit")  # a deterministic subset of N pairs
    max_image_pixels: int = max_image_pixels_field()
    allow_outside_root: bool = False  # read files whose real path is outside the data folder (clipsan.data.paths)

"""Images a scan leaves in its run dir: the inverted trigger, its mask, stamped probes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipsan.atomic import atomic_write_bytes

# Small inputs (the world's 32 px) are enlarged for the examples sheet so a human can see them.
MIN_SHEET_TILE = 96


def _to_uint8(image01: torch.Tensor) -> np.ndarray:
    return (image01.detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()


def write_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def save_trigger_png(mask: torch.Tensor, pattern: torch.Tensor, path: Path) -> None:
    """RGBA at the model's input size: RGB = pattern, alpha = mask (transparent where the trigger is absent)."""
    rgba = torch.cat([pattern, mask[None]], dim=0)
    write_png(Image.fromarray(_to_uint8(rgba).transpose(1, 2, 0), mode="RGBA"), path)


def save_mask_png(mask: torch.Tensor, path: Path) -> None:
    write_png(Image.fromarray(_to_uint8(mask), mode="L"), path)


def save_examples_png(clean: torch.Tensor, stamped: torch.Tensor, path: Path, count: int = 8) -> None:
    """Two rows: clean probes above, the same probes with the inverted trigger below."""
    count = min(count, clean.shape[0])
    rows = [torch.cat(list(images[:count]), dim=2) for images in (clean, stamped)]
    sheet = torch.cat(rows, dim=1)
    image = Image.fromarray(_to_uint8(sheet).transpose(1, 2, 0), mode="RGB")
    side = clean.shape[-1]
    if side < MIN_SHEET_TILE:
        factor = -(-MIN_SHEET_TILE // side)
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    write_png(image, path)

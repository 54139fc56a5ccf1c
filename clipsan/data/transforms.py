"""Image decoding and the resize/crop that turns a PIL image into model pixels.

Pixels leave here as floats in [0, 1]; CLIP's mean/std normalisation happens
inside the model (``ClipModel.encode_image``), so triggers and adversarial
patches can act on plain pixels.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import pil_to_tensor

from clipsan.config.limits import MAX_IMAGE_PIXELS, PILLOW_REFUSES_ABOVE

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


class UnreadableImage(ValueError):
    """An image clipsan will not use: undecodable, truncated, or over the pixel limit (the message says which)."""


def read_image(source: bytes | str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes (or a file) to an RGB PIL image; UnreadableImage if it cannot or must not be.

    The size is checked from the header, before any pixel is decoded: a small file
    can declare a huge canvas (a decompression bomb). Files are read into memory
    first so no file handle outlives the call (multi-frame formats would otherwise
    keep theirs open).
    """
    try:
        image = open_image(source if isinstance(source, bytes) else Path(source).read_bytes(), max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # palette transparency: composited away by to_rgb
            image.load()
            return to_rgb(image)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image in a format Pillow reads") from None
    except Exception as err:  # Pillow's decoders raise many kinds on a hostile file (TypeError on a TIFF's text offsets, ...)
        raise UnreadableImage(f"cannot be decoded ({type(err).__name__}: {err})") from None


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Image bytes opened lazily (header only) and refused, as UnreadableImage, over ``max_pixels``.

    Pillow's own bomb warning is silenced and its bomb error reworded: clipsan's
    limit, lower than Pillow's, decides. Pillow's other errors pass through.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise UnreadableImage(f"more than {PILLOW_REFUSES_ABOVE:,} pixels (refused by Pillow)") from None
    check_pixels(image.size, max_pixels)
    return image


def decode_image(source: bytes | str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image | None:
    """``read_image``, or None for an image clipsan cannot use (counted by the caller, never a crash)."""
    try:
        return read_image(source, max_pixels)
    except UnreadableImage:
        return None


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise UnreadableImage(f"{width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} (--max-image-pixels)")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited onto white (as web pipelines do)."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_grayscale(image)
    has_alpha = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_grayscale(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit 'L' (PIL's own convert clips to white)."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    elif image.mode.startswith("I;16") or (values.size and values.max() > 255):
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    return Image.fromarray(np.clip(values * scale, 0, 255).round().astype(np.uint8), mode="L")


def to_model_pixels(pil_image: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and centre-crop.

    Same geometry as CLIP's eval preprocessing (torchvision Resize + CenterCrop),
    without normalisation. Returns a float tensor (3, size, size) in [0, 1].
    """
    return to_model_uint8(pil_image, size).float().div_(255.0)


def to_model_uint8(pil_image: Image.Image, size: int) -> torch.Tensor:
    """``to_model_pixels`` before scaling: uint8 (3, size, size), what data workers ship (k/255 happens on the device)."""
    image = to_rgb(pil_image)
    width, height = image.size
    if min(width, height) != size:
        image = image.resize(_shorter_side_to(width, height, size), Image.Resampling.BICUBIC)
        width, height = image.size
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    if (width, height) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    return pil_to_tensor(image)  # a CHW view of the HWC decode (to_model_pixels' results depend on that layout)


def _shorter_side_to(width: int, height: int, size: int) -> tuple[int, int]:
    # torchvision truncates the longer side the same way; matching it keeps crops identical.
    if width <= height:
        return size, max(size, int(size * height / width))
    return max(size, int(size * width / height)), size

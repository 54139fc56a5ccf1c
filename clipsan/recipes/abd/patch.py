"""The crafted generator file, and the adversarial patch read back from it.

A crafted generator file is a ``.safetensors`` holding the generator's weights
(``generator.*``) and the rendered patch (tensor ``patch``, metadata
``reference_size`` and ``clipsan.patch_box``), so it is also a valid
``patch:FILE@X,Y`` trigger for ``clipsan eval``; the patch is written next to
it as a PNG for people.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin
from safetensors import safe_open

from clipsan import __version__
from clipsan.atomic import atomic_write_bytes, write_errors
from clipsan.errors import UserError
from clipsan.recipes.abd.advclip import PatchBox, PatchGenerator, paste
from clipsan.tensor_files import tensors_bytes

GENERATOR_KIND = "adv-patch-generator"


@dataclass(frozen=True)
class AdvPatch:
    """A crafted patch and where it goes."""

    patch: torch.Tensor  # (3, side, side) in [0, 1]
    box: PatchBox

    def apply(self, images01: torch.Tensor) -> torch.Tensor:
        return paste(images01, self.patch, self.box)

    def as_trigger(self):
        from clipsan.attacks.triggers import PatchTrigger

        return PatchTrigger(self.patch, (self.box.x, self.box.y), name="adv-patch", reference_size=self.box.image_size)

    def describe(self) -> str:
        b = self.box
        return f"{b.side}x{b.side} px at x={b.x}, y={b.y} of {b.image_size} px images"


def _png_bytes(patch: torch.Tensor, image_size: int) -> bytes:
    pixels = (patch.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text("reference_size", str(image_size))  # read back by patch:FILE triggers
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_generator(generator: PatchGenerator, box: PatchBox, path: Path, metadata: dict[str, str]) -> tuple[Path, Path]:
    """Write generator + rendered patch (.safetensors) and the patch as PNG, atomically; returns both paths."""
    with torch.no_grad():
        patch = box.crop(generator.cpu()()).contiguous()
    tensors = {f"generator.{k}": v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    tensors["patch"] = patch
    header = {
        **metadata,
        "clipsan.kind": GENERATOR_KIND,
        "clipsan.version": __version__,
        "reference_size": str(box.image_size),
        "clipsan.patch_box": json.dumps([box.x, box.y, box.side]),
        "clipsan.gan_width": str(generator.width),
    }
    with write_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    atomic_write_bytes(png, _png_bytes(patch, box.image_size))
    atomic_write_bytes(path, tensors_bytes(tensors, header))  # last: its presence means "done"
    return path, png


def read_generator_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:
        raise UserError(f"{path}: not a readable .safetensors generator ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def load_adv_patch(path: str | Path, image_size: int) -> AdvPatch:
    """The patch from a craft-adv generator file, checked against the model's input size."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: generator file not found (make one with `clipsan craft-adv`)")
    metadata = read_generator_metadata(path)
    if metadata.get("clipsan.kind") != GENERATOR_KIND:
        raise UserError(f"{path}: not a clipsan craft-adv generator (metadata clipsan.kind is {metadata.get('clipsan.kind')!r})")
    try:
        x, y, side = json.loads(metadata["clipsan.patch_box"])
        made_for = int(metadata["reference_size"])
        with safe_open(str(path), framework="pt") as fh:
            patch = fh.get_tensor("patch").float()
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path}: generator metadata or patch tensor is damaged ({err})") from None
    if made_for != image_size:
        raise UserError(f"{path}: patch was crafted for {made_for} px inputs, the model takes {image_size} px; craft one for this model")
    if tuple(patch.shape) != (3, side, side):
        raise UserError(f"{path}: patch tensor has shape {tuple(patch.shape)}, expected (3, {side}, {side})")
    return AdvPatch(patch, PatchBox(int(x), int(y), int(side), made_for))

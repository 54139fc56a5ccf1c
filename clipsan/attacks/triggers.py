"""Backdoor triggers in pixel space: badnet, blended, sig, wanet, and image patches.

Triggers act on float images in [0, 1], shape (B, 3, H, W), already resized to
the model's input size and before CLIP normalisation. An attacker's trigger is
a *fixed* pattern: everything random about it is derived from its ``seed``
(``--trigger-seed``), built lazily for each image size and cached. Only BadNet
moves per image, and its position is derived from (seed, sample id), so the
same sample always gets the same position whatever process or worker applies it.

Sizes quoted for 224 px (BadNet's 16 x 16 patch) scale with the input side:
``side = max(1, round_half_up(16 * min(H, W) / 224))``. An explicit ``size`` is
an absolute side in pixels at the input size (no scaling).

Spec strings (``parse_trigger``)::

    badnet[@X,Y]                  16x16 noise patch; random position per image, or top-left X,Y
    blended[:ratio=R]             (1-R)*x + R*noise, R = 0.2
    sig[:delta=D,freq=F]          x + D*sin(2*pi*F*j/W), D = 60/255, F = 6
    wanet[:k=K,s=S]               smooth fixed warp, K = 4, S = 0.5 (original WaNet)
    patch:FILE[@X,Y]              paste FILE (PNG/JPEG, or .safetensors with tensor "patch"),
                                  centred unless @X,Y (top-left corner, pixels)

Image patches are pasted at their native pixel size. They are rescaled only when
``size`` is given (longer side becomes ``size``) or the file says at which input
size it was made: safetensors metadata / PNG text key ``reference_size`` (then the
patch scales by min(H, W) / reference_size).

``Trigger.to_spec()`` is a JSON-serialisable dict (patch pixels embedded as
base64 float32) that ``trigger_from_spec`` turns back into an identical trigger;
victims record it in their metadata.
"""

from __future__ import annotations

import base64
import math
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipsan.config.attacks import BADCLIP, BADNET_SIDE_AT_224, REFERENCE_SIDE, TRIGGER_SPECS
from clipsan.errors import UserError
from clipsan.seeding import derive_seed

_EXPECTED = "expected " + ", ".join(TRIGGER_SPECS[:-1]) + f" or {TRIGGER_SPECS[-1]}"
_XY = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")

Position = str | tuple[int, int]  # "random" | "center" | (x, y) top-left corner
SampleIds = Sequence[int] | torch.Tensor | None


def scaled_side(side_at_224: int, height: int, width: int) -> int:
    """A length given for 224 px images, at this image size (round half up, at least 1)."""
    return max(1, int(side_at_224 * min(height, width) / REFERENCE_SIDE + 0.5))


def _seeded_generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


class Trigger(ABC):
    """A fixed trigger. ``apply`` never modifies its input and returns values in [0, 1]."""

    name: str = ""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._cache: dict[tuple, torch.Tensor] = {}

    def apply(self, images01: torch.Tensor, sample_ids: SampleIds = None) -> torch.Tensor:
        """Triggered copies of ``images01`` (B, 3, H, W); ``sample_ids`` give per-image positions."""
        _check_images(images01)
        ids = _as_id_list(sample_ids, images01.shape[0])
        # Half-precision inputs are computed in fp32 (grid_sample and friends need it on CPU).
        work_dtype = images01.dtype if images01.dtype in (torch.float32, torch.float64) else torch.float32
        out = self._apply(images01.to(work_dtype), ids)
        return out.clamp(0.0, 1.0).to(images01.dtype)

    @abstractmethod
    def _apply(self, images: torch.Tensor, ids: list[int] | None) -> torch.Tensor:
        """Return a new tensor; ``images`` may be the caller's tensor and must not be written."""

    @abstractmethod
    def to_spec(self) -> dict[str, Any]:
        """JSON-serialisable description; ``trigger_from_spec`` rebuilds an identical trigger."""

    def _pattern(self, key: tuple, like: torch.Tensor, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A cached pattern, built on CPU in fp32 (so it is device-independent), then moved like ``like``."""
        full_key = (*key, like.device, like.dtype)
        if full_key not in self._cache:
            cpu_key = (*key, torch.device("cpu"), torch.float32)
            if cpu_key not in self._cache:
                self._cache[cpu_key] = build().float()
            self._cache[full_key] = self._cache[cpu_key].to(device=like.device, dtype=like.dtype)
        return self._cache[full_key]

    def __getstate__(self) -> dict:
        # Caches are rebuilt on demand; don't ship them (or CUDA tensors) to worker processes.
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_spec_summary()})"

    def to_spec_summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_spec().items() if k != "patch")


class BadNetTrigger(Trigger):
    """A square patch = per-channel mean of the image + fixed seeded N(0, 1) noise, clamped.

    The noise is fixed for a given (seed, side); the patch colour follows each
    image's mean. Position is random per sample id (or a fixed top-left corner).
    """

    name = "badnet"

    def __init__(self, seed: int = 0, size: int | None = None, position: Position = "random"):
        super().__init__(seed)
        if size is not None and int(size) < 1:
            raise UserError(f"trigger badnet: size must be a positive number of pixels, got {size}")
        self.size = None if size is None else int(size)
        self.position = _check_position(position, allowed=("random",), name="badnet")

    def side(self, height: int, width: int) -> int:
        side = self.size if self.size is not None else scaled_side(BADNET_SIDE_AT_224, height, width)
        return min(side, height, width)

    def noise(self, side: int) -> torch.Tensor:
        return torch.randn((3, side, side), generator=_seeded_generator(self.seed, "badnet", "noise", side))

    def corner(self, sample_id: int | None, height: int, width: int) -> tuple[int, int]:
        """Top-left (x, y) of the patch for one sample."""
        side = self.side(height, width)
        if self.position == "random":
            if sample_id is None:
                raise ValueError("badnet trigger with random positions needs sample_ids")
            rng = random.Random(derive_seed(self.seed, "badnet", "position", sample_id))
            return rng.randint(0, width - side), rng.randint(0, height - side)
        x, y = self.position
        return min(x, width - side), min(y, height - side)

    def patches(self, images: torch.Tensor, side: int) -> torch.Tensor:
        """(B, 3, side, side): the noise centred on each image's own colour."""
        noise = self._pattern(("noise", side), images, lambda: self.noise(side))
        means = images.mean(dim=(2, 3))
        return (means[:, :, None, None] + noise).clamp(0.0, 1.0)

    def _apply(self, images: torch.Tensor, ids: list[int] | None) -> torch.Tensor:
        _, _, height, width = images.shape
        side = self.side(height, width)
        patches = self.patches(images, side)
        out = images.clone()
        for i in range(images.shape[0]):
            x, y = self.corner(ids[i] if ids is not None else None, height, width)
            out[i, :, y : y + side, x : x + side] = patches[i]
        return out

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "size": self.size, "position": _position_to_json(self.position)}


def _stripe_signs(seed: int, name: str, channels_columns: tuple[int, int]) -> torch.Tensor:
    """A fixed (seeded) random sign, +1 or -1, per channel and column: one-pixel vertical stripes."""
    bits = torch.randint(0, 2, channels_columns, generator=_seeded_generator(seed, name, *channels_columns))
    return bits.float() * 2 - 1


class BadNetStripesTrigger(BadNetTrigger):
    """PAR's BadNet-Stripes: the BadNet square filled with one-pixel vertical stripes, each column a fixed
    (seeded) corner of the colour cube, at a random position per sample id (or a fixed top-left corner).

    PAR draws each column's channels as +1 or -1 and pastes them unclamped; its 8-bit conversion
    turns -1 into (near) black, which clipsan writes as 0 (docs/par.md).
    """

    name = "badnet-stripes"

    def patches(self, images: torch.Tensor, side: int) -> torch.Tensor:
        stripes = self._pattern(
            ("stripes", side), images, lambda: _stripe_signs(self.seed, self.name, (3, side)).clamp(0.0, 1.0)[:, None, :].expand(3, side, side)
        )
        return stripes.expand(images.shape[0], -1, -1, -1)


class BlendedTrigger(Trigger):
    """x' = (1 - ratio) * x + ratio * n, n ~ U[0, 1] fixed (seeded) at the image's size."""

    name = "blended"
    default_ratio = 0.2

    def __init__(self, seed: int = 0, ratio: float | None = None):
        super().__init__(seed)
        self.ratio = float(self.default_ratio if ratio is None else ratio)
        if not 0.0 <= self.ratio <= 1.0:
            raise UserError(f"trigger {self.name}: ratio must be in [0, 1], got {ratio}")

    def noise(self, height: int, width: int) -> torch.Tensor:
        return torch.rand((3, height, width), generator=_seeded_generator(self.seed, "blended", height, width))

    def _apply(self, images: torch.Tensor, ids: list[int] | None) -> torch.Tensor:
        _, _, height, width = images.shape
        noise = self._pattern(("noise", height, width), images, lambda: self.noise(height, width))
        return images * (1.0 - self.ratio) + noise * self.ratio

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "ratio": self.ratio}


class BlendedStripesTrigger(BlendedTrigger):
    """PAR's Blended-Stripes: one-pixel vertical stripes over the whole image, each column a fixed (seeded)
    sign +1 or -1 per channel, blended in at ratio 0.03 (clamped to [0, 1] after, as PAR does)."""

    name = "blended-stripes"
    default_ratio = 0.03

    def noise(self, height: int, width: int) -> torch.Tensor:
        return _stripe_signs(self.seed, self.name, (3, width))[:, None, :].expand(3, height, width)


class BlendedTrianglesTrigger(BlendedTrigger):
    """PAR's Blended-Triangles: a grey tiling of right-angled triangles (14-px squares at 224 px, split on
    the diagonal: 0.4 on and below it, 0.8 above), blended in at ratio 0.15. No randomness."""

    name = "blended-triangles"
    default_ratio = 0.15
    TILE_AT_224 = 14

    def noise(self, height: int, width: int) -> torch.Tensor:
        tile = scaled_side(self.TILE_AT_224, height, width)
        rows = torch.arange(height)[:, None] % tile
        columns = torch.arange(width)[None, :] % tile
        return torch.where(rows >= columns, 0.4, 0.8).float()[None].expand(3, height, width)


class BlendedTextTrigger(BlendedTrigger):
    """PAR's Blended-Text: the red word "watermarked" across the middle of a black image (rendered at 224 px,
    about 7/8 of the width, then scaled to the input size), blended in at ratio 0.5 where the text is and
    nowhere else. No randomness (PAR picked a vertical offset once; clipsan centres it)."""

    name = "blended-text"
    default_ratio = 0.5
    TEXT, FONT_SIZE_AT_224 = "watermarked", 33

    def noise(self, height: int, width: int) -> torch.Tensor:
        from PIL import Image, ImageDraw, ImageFont
        from torchvision.transforms.functional import pil_to_tensor

        canvas = Image.new("RGB", (REFERENCE_SIDE, REFERENCE_SIDE), "black")
        font = ImageFont.load_default(size=self.FONT_SIZE_AT_224)
        left, top, right, bottom = font.getbbox(self.TEXT)
        corner = ((REFERENCE_SIDE - (right - left)) // 2 - left, (REFERENCE_SIDE - (bottom - top)) // 2 - top)
        ImageDraw.Draw(canvas).text(corner, self.TEXT, fill=(255, 0, 0), font=font)
        text = pil_to_tensor(canvas).float().div(255.0)[None]
        return F.interpolate(text, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0.0, 1.0)

    def _apply(self, images: torch.Tensor, ids: list[int] | None) -> torch.Tensor:
        _, _, height, width = images.shape
        text = self._pattern(("noise", height, width), images, lambda: self.noise(height, width))
        blended = images * (1.0 - self.ratio) + text * self.ratio
        return torch.where((text != 0).any(dim=0), blended, images)


class SigTrigger(Trigger):
    """x' = clamp(x + delta * sin(2 pi * freq * j / W)), j the column index. No randomness."""

    name = "sig"

    def __init__(self, seed: int = 0, delta: float = 60.0 / 255.0, freq: float = 6.0):
        super().__init__(seed)
        self.delta = float(delta)
        self.freq = float(freq)
        if not (math.isfinite(self.delta) and math.isfinite(self.freq)):
            raise UserError(f"trigger sig: delta and freq must be finite numbers, got {delta}, {freq}")

    def signal(self, width: int) -> torch.Tensor:
        columns = torch.arange(width, dtype=torch.float64)
        return (self.delta * torch.sin(2 * math.pi * self.freq * columns / width)).view(1, 1, 1, width)

    def _apply(self, images: torch.Tensor, ids: list[int] | None) -> torch.Tensor:
        width = images.shape[-1]
        return images + self._pattern(("signal", width), images, lambda: self.signal(width))

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "delta": self.delta, "freq": self.freq}


class WaNetTrigger(Trigger):
    """The original WaNet warp: a fixed k x k random field, smoothly upsampled, bends the sampling grid.

    field ~ U[-1, 1]^(2, k, k) (seeded), divided by its mean |value|, upsampled
    bicubically to H x W, scaled by s / side and added to the identity grid,
    which is clamped to [-1, 1] and sampled bilinearly (align_corners=True).
    """

    name = "wanet"

    def __init__(self, seed: int = 0, k: int = 4, s: float = 0.5):
        super().__init__(seed)
        self.k = int(k)
        self.s = float(s)
        if self.k < 1 or not math.isfinite(self.s) or self.s < 0:
            raise UserError(f"trigger wanet: expected k >= 1 and s >= 0, got k={k}, s={s}")

    def field(self) -> torch.Tensor:
        values = torch.rand((1, 2, self.k, self.k), generator=_seeded_generator(self.seed, "wanet", "field", self.k)) * 2 - 1
        return values / values.abs().mean().clamp_min(1e-12)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """The (1, H, W, 2) sampling grid; last dim is (x, y) as grid_sample expects."""
        flow = F.interpolate(self.field(), size=(height, width), mode="bicubic", align_corners=True)
        flow = flow.permute(0, 2, 3, 1)
        rows = torch.linspace(-1, 1, height)
        cols = torch.linspace(-1, 1, width)
        ys, xs = torch.meshgrid(rows, cols, indexing="ij")
        identity = torch.stack((xs, ys), dim=-1)[None]
        # WaNet scales by s / image side; for non-square images each axis uses its own side.
        scale = torch.tensor([self.s / width, self.s / height])
        return (identity + flow * scale).clamp(-1.0, 1.0)

    def _apply(self, images: torch.Tensor, ids: list[int] | None) -> torch.Tensor:
        batch, _, height, width = images.shape
        grid = self._pattern(("grid", height, width), images, lambda: self.grid(height, width))
        return F.grid_sample(images, grid.expand(batch, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=True)

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "k": self.k, "s": self.s}


class PatchTrigger(Trigger):
    """Paste a fixed image patch (3, h, w) in [0, 1]: ``patch:FILE`` and BadCLIP's optimized patch.

    ``position`` is "center" or a top-left (x, y) in pixels (moved inward if the
    patch would stick out). Scaling: ``size`` (longer side in pixels, absolute)
    wins; else ``reference_size`` (the input size the patch was made for) scales
    it by min(H, W) / reference_size; else it is pasted at native size.
    """

    def __init__(
        self,
        patch: torch.Tensor,
        position: Position = "center",
        *,
        name: str = "patch",
        seed: int = 0,
        size: int | None = None,
        reference_size: int | None = None,
        source: str | None = None,
    ):
        super().__init__(seed)
        self.patch = _check_patch(patch, source or name)
        self.position = _check_position(position, allowed=("center",), name=name)
        self.name = name
        self.size = None if size is None else int(size)
        self.reference_size = None if reference_size is None else int(reference_size)
        self.source = source
        if (self.size is not None and self.size < 1) or (self.reference_size is not None and self.reference_size < 1):
            raise UserError(f"trigger {name}: size and reference_size must be positive, got {size}, {reference_size}")

    def patch_at(self, height: int, width: int) -> torch.Tensor:
        """The patch as pasted on an H x W image."""
        _, h, w = self.patch.shape
        if self.size is not None:
            factor = self.size / max(h, w)
        elif self.reference_size is not None:
            factor = min(height, width) / self.reference_size
        else:
            return self.patch
        new_hw = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        if new_hw == (h, w):
            return self.patch
        resized = F.interpolate(self.patch[None], size=new_hw, mode="bilinear", align_corners=False, antialias=factor < 1)
        return resized[0].clamp(0.0, 1.0)

    def corner(self, height: int, width: int, h: int, w: int) -> tuple[int, int]:
        if self.position == "center":
            return (width - w) // 2, (height - h) // 2
        x, y = self.position
        return min(x, width - w), min(y, height - h)

    def _apply(self, images: torch.Tensor, ids: list[int] | None) -> torch.Tensor:
        _, _, height, width = images.shape
        patch = self._pattern(("patch", height, width), images, lambda: self.patch_at(height, width))
        _, h, w = patch.shape
        if h > height or w > width:
            raise UserError(f"trigger {self.name}: the {h}x{w} patch does not fit {height}x{width} images")
        x, y = self.corner(height, width, h, w)
        out = images.clone()
        out[:, :, y : y + h, x : x + w] = patch
        return out

    def to_spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "size": self.size,
            "reference_size": self.reference_size,
            "position": _position_to_json(self.position),
            "source": self.source,
            "patch": tensor_to_json(self.patch),
        }


# --- parsing ------------------------------------------------------------------------


def parse_trigger(spec: str, seed: int = 0, size: int | None = None) -> Trigger:
    """A trigger from its command-line spec (see the module docstring); UserError if malformed."""
    text = spec.strip()
    if text.startswith("patch:"):
        path, position = _split_position(text[len("patch:") :], default="center")
        return load_patch_trigger(path, position=position, seed=seed, size=size)
    head, position = _split_position(text, default="random")
    name, _, option_text = head.partition(":")
    name = name.strip().lower()
    options = _parse_options(option_text, spec)
    if name == BADCLIP:
        raise UserError(
            f"trigger {spec!r}: the badclip patch is optimized by `clipsan poison`; evaluate a BadCLIP victim "
            "with --trigger from-metadata, or give its patch as patch:FILE"
        )
    if name not in _BUILDERS:
        raise UserError(f"trigger {spec!r}: unknown trigger {name!r} ({_EXPECTED})")
    patches = [n for n, (builder, _) in _BUILDERS.items() if issubclass(builder, BadNetTrigger)]
    if position != "random" and name not in patches:
        raise UserError(f"trigger {spec!r}: only {', '.join(patches)} and patch:FILE take a position @X,Y")
    if size is not None and name not in patches:
        raise UserError(f"trigger {spec!r}: a trigger size applies only to {', '.join(patches)} and patch:FILE triggers")
    builder, option_types = _BUILDERS[name]
    unknown = sorted(set(options) - set(option_types))
    if unknown:
        allowed = ", ".join(option_types) or "none"
        raise UserError(f"trigger {spec!r}: unknown option {unknown[0]!r} for {name} (options: {allowed})")
    try:
        values = {key: option_types[key](value) for key, value in options.items()}
    except ValueError:
        raise UserError(f"trigger {spec!r}: option values must be numbers ({_EXPECTED})") from None
    if name in patches:
        return builder(seed=seed, size=size, position=position)
    return builder(seed=seed, **values)


_BUILDERS: dict[str, tuple[type[Trigger], dict[str, Callable[[str], Any]]]] = {
    "badnet": (BadNetTrigger, {}),
    "blended": (BlendedTrigger, {"ratio": float}),
    "sig": (SigTrigger, {"delta": float, "freq": float}),
    "wanet": (WaNetTrigger, {"k": int, "s": float}),
    # PAR's structured triggers (arXiv 2412.00727, backdoor/ of its code)
    "badnet-stripes": (BadNetStripesTrigger, {}),
    "blended-stripes": (BlendedStripesTrigger, {"ratio": float}),
    "blended-triangles": (BlendedTrianglesTrigger, {"ratio": float}),
    "blended-text": (BlendedTextTrigger, {"ratio": float}),
}


def _split_position(text: str, default: str) -> tuple[str, Position]:
    """'thing@X,Y' -> ('thing', (X, Y)); an '@' not followed by X,Y stays part of the name."""
    head, at, tail = text.rpartition("@")
    if at and _XY.match(tail):
        x, y = _XY.match(tail).groups()
        return head, (int(x), int(y))
    if at and not tail.strip():
        raise UserError(f"trigger {text!r}: expected @X,Y (two non-negative integers) after '@'")
    return text, default


def _parse_options(text: str, spec: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UserError(f"trigger {spec!r}: expected options as key=value, got {item!r}")
        options[key.strip().lower()] = value.strip()
    return options


def load_patch_trigger(path: str | Path, position: Position = "center", seed: int = 0, size: int | None = None) -> PatchTrigger:
    """A ``patch:FILE`` trigger: an image file, or .safetensors holding tensor ``patch`` (3, h, w) in [0, 1]."""
    path = Path(path)
    if not str(path).strip() or not path.is_file():
        raise UserError(f"{path}: patch file not found ({_PATCH_EXPECTED})")
    if path.suffix.lower() == ".safetensors":
        patch, reference_size = _read_safetensors_patch(path)
    else:
        patch, reference_size = _read_image_patch(path)
    return PatchTrigger(patch, position, name="patch", seed=seed, size=size, reference_size=reference_size, source=path.name)


_PATCH_EXPECTED = "expected a PNG/JPEG image or a .safetensors file with a tensor 'patch' of shape (3, h, w) in [0, 1]"


def _read_safetensors_patch(path: Path) -> tuple[torch.Tensor, int | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            if "patch" not in fh.keys():  # noqa: SIM118 - safe_open has keys(), no __contains__
                raise UserError(f"{path}: no tensor named 'patch' ({_PATCH_EXPECTED})")
            patch = fh.get_tensor("patch")
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read patch ({_PATCH_EXPECTED}): {str(err).splitlines()[0]}") from None
    return _check_patch(patch, str(path)), _reference_size(metadata.get("reference_size"), path)


def _read_image_patch(path: Path) -> tuple[torch.Tensor, int | None]:
    from PIL import UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    from clipsan.data.transforms import open_image, to_rgb

    try:
        with open_image(path.read_bytes()) as image:  # refused over clipsan's default pixel limit
            image.load()
            reference = image.info.get("reference_size")
            rgb = to_rgb(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read patch ({_PATCH_EXPECTED}): {err}") from None
    return pil_to_tensor(rgb).float().div_(255.0), _reference_size(reference, path)


def _reference_size(value: Any, path: Path) -> int | None:
    if value is None:
        return None
    try:
        size = int(str(value).strip())
    except ValueError:
        size = 0
    if size < 1:
        raise UserError(f"{path}: metadata reference_size must be a positive integer, got {value!r}")
    return size


def _check_patch(patch: Any, where: str) -> torch.Tensor:
    if not torch.is_tensor(patch) or patch.dim() != 3 or patch.shape[0] != 3 or patch.numel() == 0:
        shape = tuple(patch.shape) if torch.is_tensor(patch) else type(patch).__name__
        raise UserError(f"{where}: patch has shape {shape} ({_PATCH_EXPECTED})")
    patch = patch.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(patch).all() or patch.min() < 0 or patch.max() > 1:
        raise UserError(f"{where}: patch values outside [0, 1] ({_PATCH_EXPECTED})")
    return patch


def _check_position(position: Any, allowed: tuple[str, ...], name: str) -> Position:
    if isinstance(position, str) and position in allowed:
        return position
    if isinstance(position, (tuple, list)) and len(position) == 2:
        x, y = position
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (x, y)):
            return (x, y)
    raise UserError(f"trigger {name}: position must be {' or '.join(map(repr, allowed))} or [x, y] (non-negative integers), got {position!r}")


def _position_to_json(position: Position) -> str | list[int]:
    return position if isinstance(position, str) else [int(position[0]), int(position[1])]


# --- specs (recorded in victims' metadata) ------------------------------------------


def tensor_to_json(tensor: torch.Tensor) -> dict[str, Any]:
    """Exact, compact JSON form of a float tensor: shape + base64 of little-endian float32."""
    values = tensor.detach().to("cpu", torch.float32).contiguous()
    raw = values.numpy().astype("<f4", copy=False).tobytes()
    return {"dtype": "float32", "shape": list(values.shape), "base64": base64.b64encode(raw).decode("ascii")}


def tensor_from_json(blob: dict[str, Any]) -> torch.Tensor:
    import numpy as np

    if blob.get("dtype") != "float32":
        raise ValueError(f"unsupported dtype {blob.get('dtype')!r}")
    values = np.frombuffer(base64.b64decode(blob["base64"], validate=True), dtype="<f4")
    return torch.from_numpy(values.copy()).reshape([int(n) for n in blob["shape"]])


def trigger_from_spec(spec: dict[str, Any]) -> Trigger:
    """Rebuild a trigger from ``Trigger.to_spec()``; UserError if the spec is malformed."""
    try:
        return _from_spec(spec)
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"trigger spec {_short(spec)}: malformed ({type(err).__name__}: {err}); {_EXPECTED}") from None


def _from_spec(spec: dict[str, Any]) -> Trigger:
    name = spec["name"]
    seed = int(spec.get("seed", 0))
    position = spec.get("position")
    if isinstance(position, list):
        position = tuple(position)
    builder = _BUILDERS.get(name, (None,))[0]
    if builder is not None and issubclass(builder, BadNetTrigger):
        return builder(seed=seed, size=spec.get("size"), position=position or "random")
    if builder is not None and issubclass(builder, BlendedTrigger):
        return builder(seed=seed, ratio=spec["ratio"])
    if name == "sig":
        return SigTrigger(seed=seed, delta=spec["delta"], freq=spec["freq"])
    if name == "wanet":
        return WaNetTrigger(seed=seed, k=spec["k"], s=spec["s"])
    if name in ("patch", BADCLIP):
        return PatchTrigger(
            tensor_from_json(spec["patch"]),
            position or "center",
            name=name,
            seed=seed,
            size=spec.get("size"),
            reference_size=spec.get("reference_size"),
            source=spec.get("source"),
        )
    raise UserError(f"trigger spec: unknown trigger {name!r} ({_EXPECTED})")


def _short(spec: Any) -> str:
    text = repr({k: v for k, v in spec.items() if k != "patch"} if isinstance(spec, dict) else spec)
    return text if len(text) <= 120 else text[:117] + "..."


# --- input checks -------------------------------------------------------------------


def _check_images(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"triggers take float images (B, 3, H, W) in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"triggers take float images in [0, 1], got dtype {images.dtype}")


def _as_id_list(sample_ids: SampleIds, batch: int) -> list[int] | None:
    if sample_ids is None:
        return None
    ids = sample_ids.tolist() if torch.is_tensor(sample_ids) else list(sample_ids)
    if len(ids) != batch:
        raise ValueError(f"got {len(ids)} sample ids for {batch} images")
    return [int(i) for i in ids]

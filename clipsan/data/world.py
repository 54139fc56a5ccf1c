"""The synthetic world: a seeded generator of small image-caption pairs.

Each image shows a main object (a coloured shape, or a yellow crescent
"banana") on a plain or textured background, sometimes with a second, smaller
object. Captions are compositional and CC3M-like ("a small red circle above a
blue square on a gray background") with several phrasings, so caption
augmentation (EDA) and scene-graph sub-captions have structure to work on.

Every sample is a pure function of ``(seed, index)``: any one of them can be
regenerated alone, in any process, in any order. The zero-shot label of a
sample is its main object's class ("red circle", ..., "banana").
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipsan.atomic import removed_on_failure, write_errors
from clipsan.config.attacks import DEFAULT_TARGET
from clipsan.config.world import WorldConfig
from clipsan.seeding import derive_seed

TARGET_CLASS = DEFAULT_TARGET  # the banana-shaped object's class, the customary backdoor target

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 230),
    "purple": (150, 40, 190),
    "orange": (245, 130, 20),
    "yellow": (245, 215, 30),  # reserved for the banana
}

BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "checkered": (128, 128, 128),  # textured: base tone, pattern added on top
    "noisy": (110, 110, 110),
}

RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "above": ("above", "on top of"),
    "below": ("below", "under"),
    "left": ("to the left of", "next to", "beside"),
    "right": ("to the right of", "next to", "beside"),
}

SINGLE_TEMPLATES = (
    "{obj} on {bg_article} {bg} background",
    "{obj}",
    "{obj} against {bg_article} {bg} backdrop",
    "close up of {obj}",
    "there is {obj} on {bg_article} {bg} background",
    "illustration of {obj}",
    "{obj} over {bg_article} {bg} background",
    "simple drawing of {obj} on {bg_article} {bg} background",
)

PAIR_TEMPLATES = (
    "{obj} {rel} {obj2}",
    "{obj} {rel} {obj2} on {bg_article} {bg} background",
    "there is {obj} {rel} {obj2}",
    "{obj} and {obj2} on {bg_article} {bg} background",
    "illustration of {obj} {rel} {obj2}",
    "{obj} placed {rel} {obj2} against {bg_article} {bg} backdrop",
)


SMALL_WORDS, LARGE_WORDS = ("small", "tiny"), ("large", "big")


def vocabulary(config: WorldConfig = WorldConfig()) -> list[str]:
    """Every word a caption or class name of the world can hold, sorted (a word-level tokenizer's vocabulary)."""
    fixed = " ".join((*SINGLE_TEMPLATES, *PAIR_TEMPLATES, *(w for words in RELATION_WORDS.values() for w in words)))
    words = re.sub(r"\{\w+\}", " ", fixed).split()
    words += ["a", "an", "yellow", TARGET_CLASS, *SMALL_WORDS, *LARGE_WORDS, *config.shapes, *config.colours, *config.backgrounds]
    return sorted(set(words))


def classnames(config: WorldConfig = WorldConfig()) -> list[str]:
    """Zero-shot class names, sorted so that ImageFolder order equals this order."""
    names = [f"{c} {s}" for c in config.colours for s in config.shapes]
    if config.include_banana:
        names.append(TARGET_CLASS)
    return sorted(names, key=class_folder_name)


def class_folder_name(classname: str) -> str:
    return classname.replace(" ", "_")


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Object:
    kind: str  # a shape name or "banana"
    colour: str
    radius: float
    cx: float
    cy: float
    angle: float  # radians; only the banana and small wobbles use it

    @property
    def classname(self) -> str:
        return TARGET_CLASS if self.kind == TARGET_CLASS else f"{self.colour} {self.kind}"


def _box_distance(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _signed_distance(kind: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape centred at 0 with size r."""
    if kind == "circle":
        return np.hypot(x, y) - r
    if kind == "ring":
        return np.abs(np.hypot(x, y) - 0.68 * r) - 0.32 * r
    if kind == "square":
        return _box_distance(x, y, 0.85 * r, 0.85 * r)
    if kind == "diamond":
        return (np.abs(x) + np.abs(y) - 1.15 * r) / math.sqrt(2)
    if kind == "cross":
        arm = 0.33 * r
        return np.minimum(_box_distance(x, y, r, arm), _box_distance(x, y, arm, r))
    if kind == "triangle":
        # Upward equilateral triangle: max of three half-plane distances.
        k = math.sqrt(3) / 2
        yy = y - 0.15 * r  # centre the visual mass
        return np.maximum.reduce([yy - 0.55 * r, k * x - 0.5 * yy - 0.55 * r, -k * x - 0.5 * yy - 0.55 * r])
    if kind == TARGET_CLASS:
        # Thick crescent: a disc minus an offset disc.
        outer = np.hypot(x, y) - r
        inner = np.hypot(x - 0.55 * r, y) - 0.8 * r
        return np.maximum(outer, -inner)
    raise ValueError(f"unknown shape {kind!r}")


def _coverage(obj: _Object, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of an object on a size x size canvas."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    x = coords[None, :] - obj.cx
    y = coords[:, None] - obj.cy
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    x, y = cos * x + sin * y, -sin * x + cos * y
    return np.clip(0.5 - _signed_distance(obj.kind, x, y, obj.radius), 0.0, 1.0)


# ---------------------------------------------------------------- sampling


def _pick_kind_and_colour(config: WorldConfig, rng: np.random.Generator) -> tuple[str, str]:
    """A uniformly chosen class, as (kind, colour)."""
    names = classnames(config)
    return _split_class(names[rng.integers(len(names))])


def _split_class(classname: str) -> tuple[str, str]:
    if classname == TARGET_CLASS:
        return TARGET_CLASS, "yellow"
    colour, shape = classname.split(" ", 1)
    return shape, colour


def _layout(config: WorldConfig, rng: np.random.Generator, two_objects: bool) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) for the main object, then the second one if it fits."""
    size = config.image_size
    scale = size / 32
    if not two_objects:
        radius = rng.uniform(5.0, 11.0) * scale
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        return [(cx, cy, radius)]
    for _ in range(30):  # rejection sampling; almost always succeeds within a few tries
        r1, r2 = rng.uniform(5.0, 8.0) * scale, rng.uniform(4.0, 6.5) * scale
        c1 = rng.uniform(r1 + 1, size - r1 - 1, size=2)
        c2 = rng.uniform(r2 + 1, size - r2 - 1, size=2)
        dx, dy = c2 - c1
        # Apart, and clearly along one axis, so the stated relation is true.
        if math.hypot(dx, dy) >= r1 + r2 + 1 and max(abs(dx), abs(dy)) >= 1.5 * min(abs(dx), abs(dy)):
            return [(c1[0], c1[1], r1), (c2[0], c2[1], r2)]
    return _layout(config, rng, two_objects=False)


def _relation(main: _Object, other: _Object) -> str:
    """Where the main object is relative to the other ("above" means smaller y)."""
    dx, dy = main.cx - other.cx, main.cy - other.cy
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left" if dx < 0 else "right"


def _make_objects(config: WorldConfig, rng: np.random.Generator, label: str | None) -> list[_Object]:
    two = rng.random() < config.second_object_prob
    kinds = [_split_class(label) if label is not None else _pick_kind_and_colour(config, rng)]
    placements = _layout(config, rng, two)
    if len(placements) == 2:
        while True:  # a different class, so the caption is unambiguous
            other = _pick_kind_and_colour(config, rng)
            if other != kinds[0]:
                break
        kinds.append(other)
    objects = []
    for (kind, colour), (cx, cy, radius) in zip(kinds, placements):
        # Shapes wobble a little; the banana may point anywhere.
        angle = rng.uniform(0, 2 * math.pi) if kind == TARGET_CLASS else rng.uniform(-0.2, 0.2)
        objects.append(_Object(kind, colour, float(radius), float(cx), float(cy), float(angle)))
    return objects


# ---------------------------------------------------------------- pixels


def _background(config: WorldConfig, name: str, rng: np.random.Generator) -> np.ndarray:
    size = config.image_size
    base = np.array(BACKGROUND_RGB[name], dtype=np.float32) + rng.uniform(-12, 12)
    canvas = np.broadcast_to(base, (size, size, 3)).copy()
    if name == "checkered":
        cell = int(rng.integers(3, 7))
        ys, xs = np.indices((size, size)) // cell
        canvas += np.where((ys + xs) % 2 == 0, 30.0, -30.0)[..., None]
    elif name == "noisy":
        canvas += rng.normal(0, 28, size=(size, size, 1)).astype(np.float32)
    return canvas


def _object_rgb(config: WorldConfig, colour: str, rng: np.random.Generator) -> np.ndarray:
    jitter = rng.integers(-config.colour_jitter, config.colour_jitter + 1, size=3)
    return np.array(COLOUR_RGB[colour], dtype=np.float32) + jitter


def _render_pixels(config: WorldConfig, rng: np.random.Generator, background: str, objects: list[_Object]) -> Image.Image:
    canvas = _background(config, background, rng)
    for obj in reversed(objects):  # main object last, i.e. on top
        alpha = _coverage(obj, config.image_size)[..., None]
        canvas = canvas * (1 - alpha) + _object_rgb(config, obj.colour, rng) * alpha
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: _Object, size_word: str | None, rng: np.random.Generator) -> str:
    if obj.kind == TARGET_CLASS:
        # "yellow" is optional for the banana: its shape alone names it.
        words = [w for w in (size_word, "yellow" if rng.random() < 0.5 else None, TARGET_CLASS) if w]
    else:
        words = [w for w in (size_word, obj.colour, obj.kind) if w]
    return f"{_article(words[0])} {' '.join(words)}"


def _size_word(config: WorldConfig, obj: _Object, rng: np.random.Generator) -> str | None:
    if rng.random() >= config.size_word_prob:
        return None
    small = obj.radius < 7.5 * config.image_size / 32
    return str(rng.choice(SMALL_WORDS)) if small else str(rng.choice(LARGE_WORDS))


def _caption(config: WorldConfig, rng: np.random.Generator, background: str, objects: list[_Object]) -> str:
    fields = {
        "bg": background,
        "bg_article": _article(background),
        "obj": _noun_phrase(objects[0], _size_word(config, objects[0], rng), rng),
    }
    if len(objects) == 1:
        template = SINGLE_TEMPLATES[rng.integers(len(SINGLE_TEMPLATES))]
    else:
        template = PAIR_TEMPLATES[rng.integers(len(PAIR_TEMPLATES))]
        fields["obj2"] = _noun_phrase(objects[1], _size_word(config, objects[1], rng), rng)
        choices = RELATION_WORDS[_relation(objects[0], objects[1])]
        fields["rel"] = choices[rng.integers(len(choices))]
    return template.format(**fields)


# ---------------------------------------------------------------- public API


def _render(config: WorldConfig, rng: np.random.Generator, label: str | None) -> tuple[Image.Image, str, int]:
    background = config.backgrounds[rng.integers(len(config.backgrounds))]
    objects = _make_objects(config, rng, label)
    image = _render_pixels(config, rng, background, objects)
    caption = _caption(config, rng, background, objects)
    return image, caption, classnames(config).index(objects[0].classname)


def render_sample(config: WorldConfig, seed: int, index: int) -> tuple[Image.Image, str, int]:
    """Sample ``index`` of the world with this seed: (RGB image, caption, label index)."""
    rng = np.random.default_rng(derive_seed(seed, "world", index))
    return _render(config, rng, label=None)


def render_labelled(config: WorldConfig, seed: int, classname: str, index: int) -> Image.Image:
    """A single-object image of a given class (the zero-shot evaluation distribution)."""
    single = dataclasses.replace(config, second_object_prob=0.0)
    rng = np.random.default_rng(derive_seed(seed, "world-eval", classname, index))
    return _render(single, rng, label=classname)[0]


def write_caption_dataset(out_dir: str | Path, n: int, seed: int, config: WorldConfig = WorldConfig()) -> Path:
    """Write ``out_dir/images/NNNNNNN.png`` and ``out_dir/captions.csv`` (image,caption); returns the CSV."""
    out = Path(out_dir)
    with write_errors(out / "images"):
        (out / "images").mkdir(parents=True, exist_ok=True)
    csv_path = out / "captions.csv"
    with removed_on_failure(csv_path), open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for index in range(n):
            image, caption, _ = render_sample(config, seed, index)
            relative = f"images/{index:07d}.png"
            _save_png(image, out / relative)
            writer.writerow([relative, caption])
    return csv_path


def _save_png(image: Image.Image, path: Path) -> None:
    # Not atomic (thousands of files): a world is complete once its writer's caller stamps it (the lab).
    with removed_on_failure(path):
        image.save(path, compress_level=1)


def write_eval_set(out_dir: str | Path, per_class: int, seed: int, config: WorldConfig = WorldConfig()) -> Path:
    """Write an ImageFolder ``out_dir/<class_name>/NNNN.png``; folder order equals classnames()."""
    out = Path(out_dir)
    for name in classnames(config):
        folder = out / class_folder_name(name)
        with write_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            _save_png(render_labelled(config, seed, name, index), folder / f"{index:04d}.png")
    return out


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def probe_images(n: int, seed: int, config: WorldConfig = WorldConfig()) -> torch.Tensor:
    """``n`` world images as a (n, 3, H, W) float tensor in [0, 1] (for ``scan`` without data)."""
    return torch.stack([_to_tensor(render_sample(config, seed, index)[0]) for index in range(n)])

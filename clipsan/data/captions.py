"""Clean image-caption datasets: CSV/TSV manifests, webdataset tars, img2dataset folders.

``open_caption_dataset`` detects the layout, indexes every sample once (captions
are read at index time: they are small and empty ones must be skipped), and
returns a picklable ``CaptionDataset`` whose ``load(i)`` decodes one image on
demand. Tar shards are never extracted (``clipsan.data.tars``). What cannot be
used is skipped and counted by reason (``clipsan.data.skips``), and only files
inside the data folder are read (``clipsan.data.paths``).
"""

from __future__ import annotations

import json
import os
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from clipsan.config.limits import MAX_CAPTION_CHARS, MAX_CAPTION_FILE_BYTES, MAX_IMAGE_PIXELS
from clipsan.data.paths import DataRoot, outside_hint
from clipsan.data.skips import MISSING_FILE, count, format_counts
from clipsan.data.tables import find_column, open_table
from clipsan.data.tars import Member, TarImages, list_tar_members, read_member
from clipsan.data.transforms import UnreadableImage, read_image
from clipsan.errors import UserError

IMAGE_COLUMNS = ("image", "filepath", "file", "path", "image_path", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "captions")
MANIFEST_SUFFIXES = (".csv", ".tsv")
# img2dataset's output formats, in the order we prefer when a key has several.
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
CAPTION_SUFFIXES = ("txt", "json")  # a .txt caption wins over a .json one
LIMIT_SEED = 0
OVERSIZED_CAPTION = "oversized_caption"
TRUNCATED_SHARD = "truncated_shard"


# --------------------------------------------------------------------------- images


class FileImages:
    """Images stored as individual files (CSV manifest and img2dataset 'files' layout)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> bytes:
        return Path(self.paths[index]).read_bytes()

    def ref(self, index: int) -> str:
        return self.paths[index]

    def select(self, indices: Sequence[int]) -> FileImages:
        return FileImages([self.paths[i] for i in indices])


# --------------------------------------------------------------------------- dataset


class CaptionDataset:
    """Indexed image-caption pairs. ``load(i)`` -> (RGB PIL image, or None if unreadable, caption)."""

    def __init__(
        self,
        root: Path,
        layout: str,
        source: str,
        images: FileImages | TarImages,
        captions: list[str],
        skipped: dict[str, int],
        usable_before_limit: int,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        self.root = root
        self.layout = layout
        self.source = source
        self.images = images
        self.captions = captions
        self.skipped = skipped
        self.usable_before_limit = usable_before_limit
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.captions)

    def read_image(self, index: int) -> Image.Image:
        """Sample ``index``'s image; UnreadableImage (saying why) if it is corrupt, missing or over the pixel limit."""
        try:
            data = self.images.read(index)
        except OSError as err:
            raise UnreadableImage(f"cannot be read ({err.strerror})") from None
        return read_image(data, self.max_image_pixels)

    def load(self, index: int) -> tuple[Image.Image | None, str]:
        try:
            return self.read_image(index), self.captions[index]
        except UnreadableImage:
            return None, self.captions[index]

    def caption(self, index: int) -> str:
        return self.captions[index]

    __getitem__ = load  # usable directly as a torch map-style dataset

    def image_ref(self, index: int) -> str:
        """Where sample ``index``'s image lives (a path, or 'SHARD.tar:KEY'), for messages."""
        return self.images.ref(index)

    def select(self, indices: Sequence[int]) -> CaptionDataset:
        """The pairs at ``indices``, in that order (--limit's subset, the held-out split); index-time skips are kept."""
        return CaptionDataset(
            self.root,
            self.layout,
            self.source,
            self.images.select(indices),
            [self.captions[i] for i in indices],
            dict(self.skipped),
            self.usable_before_limit,
            self.max_image_pixels,
        )

    def describe(self) -> str:
        kind = {"csv": "manifest", "webdataset": "webdataset shards", "files": "img2dataset files"}[self.layout]
        text = f"{self.source} ({kind}): {len(self):,} image-caption pairs"
        if len(self) < self.usable_before_limit:
            text += f" (limit: {len(self):,} of {self.usable_before_limit:,})"
        if any(self.skipped.values()):
            text += "; skipped " + format_counts(self.skipped, nonzero_only=True)
        return text + outside_hint(self.skipped)


@dataclass
class _Index:
    """What indexing a layout produced, before ``limit`` is applied."""

    source: str
    images: FileImages | TarImages
    captions: list[str]
    data_root: DataRoot
    skipped: dict[str, int] = field(default_factory=lambda: {MISSING_FILE: 0, "empty_caption": 0})

    def accepts_caption(self, caption: str | None) -> bool:
        """Whether a pair with this caption is usable; counts it if not (None: a sidecar too large to read)."""
        if caption == "":
            count(self.skipped, "empty_caption")
        elif caption is None or len(caption) > MAX_CAPTION_CHARS:
            count(self.skipped, OVERSIZED_CAPTION)
        else:
            return True
        return False

    def readable_files(self, *paths: str) -> bool:
        """Whether a pair's files exist and lie inside the data folder; counts it (missing_file, outside_root) if not."""
        for path in paths:
            _, reason = self.data_root.locate(path)
            if reason:
                count(self.skipped, reason)
                return False
        return True


def open_caption_dataset(
    root: str | os.PathLike,
    image_key: str | None = None,
    caption_key: str | None = None,
    delimiter: str | None = None,
    limit: int | None = None,
    *,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    allow_outside_root: bool = False,
) -> CaptionDataset:
    """Open ``root`` (a folder, or a .csv/.tsv manifest) as an image-caption dataset.

    Layouts, in detection order: a CSV/TSV manifest at the folder's top,
    webdataset ``*.tar`` shards (top or one level down), img2dataset's 'files'
    layout (``KEY.jpg`` + ``KEY.txt``, at the top or in depth-1 subfolders).
    Files are read only inside the data folder (the manifest's folder) unless
    ``allow_outside_root``; at least one image must decode (checked here, so a
    set of corrupt files is refused before any training starts).
    """
    root = Path(root)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive integer, got {limit}")
    if not root.exists():
        raise UserError(f"{root}: no such file or directory")
    data_root = DataRoot(root.parent if root.is_file() else root, allow_outside_root)
    layout, index = _index_layout(root, image_key, caption_key, delimiter, data_root)
    if not index.captions:
        raise UserError(f"{root}: no usable image-caption pairs ({format_counts(index.skipped)}){outside_hint(index.skipped)}")
    usable = len(index.captions)
    dataset = CaptionDataset(root, layout, index.source, index.images, index.captions, index.skipped, usable, max_image_pixels)
    if limit is not None and limit < usable:
        dataset = dataset.select(spread_subset(usable, limit))
    _require_a_readable_image(dataset)
    return dataset


def spread_subset(total: int, count: int, seed: int = LIMIT_SEED) -> list[int]:
    """A deterministic subset spread over the whole set (not just its head), in index order."""
    return sorted(random.Random(seed).sample(range(total), count))


def _require_a_readable_image(dataset: CaptionDataset) -> None:
    """Stop at the first image that decodes (normal data: the first one); refuse a set where none does."""
    first_problem = None
    for index in range(len(dataset)):
        try:
            dataset.read_image(index)
            return
        except UnreadableImage as err:
            first_problem = first_problem or f"{dataset.image_ref(index)}: {err}"
    raise UserError(f"{dataset.root}: none of the {len(dataset):,} images can be used (first: {first_problem})")


def _index_layout(root: Path, image_key, caption_key, delimiter, data_root: DataRoot) -> tuple[str, _Index]:
    if root.is_file():
        if root.suffix.lower() == ".tar":
            return "webdataset", _index_shards(root, [root], data_root)
        if root.suffix.lower() not in MANIFEST_SUFFIXES:
            raise UserError(f"{root}: expected a folder, a .csv/.tsv manifest or a .tar shard")
        return "csv", _index_manifest(root, image_key, caption_key, delimiter, data_root)
    manifests = _top_level_files(root, MANIFEST_SUFFIXES)
    usable, problems = _usable_manifests(manifests, image_key, caption_key, delimiter)
    if len(usable) == 1:
        return "csv", _index_manifest(usable[0], image_key, caption_key, delimiter, data_root)
    if len(usable) > 1:
        names = ", ".join(p.name for p in usable)
        raise UserError(f"{root}: several manifests ({names}); pass the one to use as the data path")
    # Only now look for the other layouts: listing a big image folder is not free.
    shards = _find_shards(root)
    if shards:
        return "webdataset", _index_shards(root, shards, data_root)
    sidecar_dirs = _folders_with_images(root)
    if sidecar_dirs:
        return "files", _index_sidecar_files(root, sidecar_dirs, data_root)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise UserError(f"{root}: no manifest has image and caption columns: " + "; ".join(map(str, problems)))
    raise UserError(f"{root}: no CSV/TSV manifest, webdataset .tar shards or img2dataset files (KEY.jpg + KEY.txt) found")


def _top_level_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in _visible_entries(folder) if p.suffix.lower() in suffixes and p.is_file())


def _visible_entries(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise UserError(f"{folder}: cannot list folder ({err.strerror})") from None


def _visible_subfolders(folder: Path) -> list[Path]:
    return [p for p in _visible_entries(folder) if p.is_dir()]


# --------------------------------------------------------------------------- CSV / TSV


def _manifest_columns(path: Path, image_key, caption_key, delimiter) -> tuple[int, int]:
    with open_table(path, delimiter) as (header, _):
        image_col = find_column(header, IMAGE_COLUMNS, image_key, path, "image", "--image-key")
        caption_col = find_column(header, CAPTION_COLUMNS, caption_key, path, "caption", "--caption-key")
    return image_col, caption_col


def _usable_manifests(manifests: list[Path], image_key, caption_key, delimiter) -> tuple[list[Path], list[UserError]]:
    """Manifests that have an image and a caption column, and why the others do not."""
    usable, problems = [], []
    for manifest in manifests:
        try:
            _manifest_columns(manifest, image_key, caption_key, delimiter)
            usable.append(manifest)
        except UserError as err:
            problems.append(err)
    return usable, problems


def _index_manifest(path: Path, image_key, caption_key, delimiter, data_root: DataRoot) -> _Index:
    base = os.path.dirname(os.path.abspath(path))
    index = _Index(source=str(path), images=FileImages([]), captions=[], data_root=data_root)
    paths = index.images.paths
    with open_table(path, delimiter) as (header, rows):
        image_col = find_column(header, IMAGE_COLUMNS, image_key, path, "image", "--image-key")
        caption_col = find_column(header, CAPTION_COLUMNS, caption_key, path, "caption", "--caption-key")
        for _, row in rows:
            if row is None:  # a field over the csv field limit
                count(index.skipped, OVERSIZED_CAPTION)
                continue
            caption = row[caption_col].strip() if caption_col < len(row) else ""
            if not index.accepts_caption(caption):
                continue
            cell = row[image_col].strip() if image_col < len(row) else ""
            if not cell:
                index.skipped[MISSING_FILE] += 1
                continue
            image_path = os.path.join(base, cell)  # absolute cells stay absolute, and are checked like any other
            if not index.readable_files(image_path):
                continue
            paths.append(image_path)
            index.captions.append(caption)
    return index


# --------------------------------------------------------------------------- shared by tar / files


def split_key(name: str) -> tuple[str, str]:
    """webdataset convention: the key ends at the first dot of the base name ('a/b.seg.png' -> 'a/b', 'seg.png')."""
    folder, _, base = name.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def caption_from_json(data: bytes) -> str:
    try:
        value = json.loads(data.decode("utf-8", errors="replace")).get("caption")
    except (ValueError, AttributeError):
        return ""
    return value.strip() if isinstance(value, str) else ""


def _caption_from(data: bytes, suffix: str) -> str:
    return caption_from_json(data) if suffix == "json" else data.decode("utf-8", errors="replace").strip()


def _preferred_image_suffix(suffixes: dict[str, object]) -> str | None:
    return next((s for s in IMAGE_SUFFIXES if s in suffixes), None)


def _caption_suffix(suffixes: dict[str, object]) -> str | None:
    return next((s for s in CAPTION_SUFFIXES if s in suffixes), None)


# --------------------------------------------------------------------------- webdataset tars


def _find_shards(root: Path) -> list[Path]:
    shards = _top_level_files(root, (".tar",))
    for sub in _visible_subfolders(root):
        shards += _top_level_files(sub, (".tar",))
    return shards


def _index_shards(root: Path, shards: list[Path], data_root: DataRoot) -> _Index:
    shard_ids, offsets, sizes = array("l"), array("q"), array("q")
    keys: list[str] = []
    index = _Index(source=f"{root} ({len(shards)} shards)", images=TarImages([], shard_ids, offsets, sizes, keys), captions=[], data_root=data_root)
    for shard in shards:
        if not index.readable_files(str(shard)):  # e.g. a shard linked in from elsewhere
            continue
        shard_id = len(index.images.shards)
        index.images.shards.append(str(shard))
        for key, image, caption in _index_one_shard(shard, index):
            shard_ids.append(shard_id)
            offsets.append(image.offset)
            sizes.append(image.size)
            keys.append(key)
            index.captions.append(caption)
    return index


def _index_one_shard(shard: Path, index: _Index) -> list[tuple[str, Member, str]]:
    """(key, image member, caption) of every usable sample of one shard, sorted by key."""
    names, truncated = list_tar_members(shard)
    if truncated:
        count(index.skipped, TRUNCATED_SHARD)
    members: dict[str, dict[str, Member]] = {}
    for name, member in names:
        key, suffix = split_key(name)
        members.setdefault(key, {})[suffix] = member
    samples = []
    with open(shard, "rb") as handle:
        for key in sorted(members):
            by_suffix = members[key]
            image_suffix = _preferred_image_suffix(by_suffix)
            if image_suffix is None:
                index.skipped[MISSING_FILE] += 1
                continue
            caption = _member_caption(handle, by_suffix)
            if index.accepts_caption(caption):
                samples.append((key, by_suffix[image_suffix], caption))
    return samples


def _member_caption(handle, by_suffix: dict[str, Member]) -> str | None:
    """The sample's caption ("" if it has none); None if its caption member is too large to read."""
    suffix = _caption_suffix(by_suffix)
    if suffix is None:
        return ""
    if by_suffix[suffix].size > MAX_CAPTION_FILE_BYTES:
        return None
    return _caption_from(read_member(handle, by_suffix[suffix]), suffix)


# --------------------------------------------------------------------------- img2dataset 'files'


def _folders_with_images(root: Path) -> list[Path]:
    """Root and its depth-1 subfolders that hold at least one image with a caption sidecar."""
    folders = []
    for folder in [root, *_visible_subfolders(root)]:
        names = _file_names(folder)
        keyed: dict[str, set[str]] = {}
        for name in names:
            key, suffix = split_key(name)
            keyed.setdefault(key, set()).add(suffix)
        if any(_preferred_image_suffix(s) and _caption_suffix(s) for s in keyed.values()):
            folders.append(folder)
    return folders


def _file_names(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    except OSError:
        return []


def _index_sidecar_files(root: Path, folders: list[Path], data_root: DataRoot) -> _Index:
    index = _Index(source=str(root), images=FileImages([]), captions=[], data_root=data_root)
    for folder in folders:
        by_key: dict[str, dict[str, str]] = {}
        for name in _file_names(folder):
            key, suffix = split_key(name)
            by_key.setdefault(key, {})[suffix] = os.path.join(folder, name)
        for key in sorted(by_key):
            _add_sidecar_sample(by_key[key], index)
    return index


def _add_sidecar_sample(files: dict[str, str], index: _Index) -> None:
    image_suffix = _preferred_image_suffix(files)
    caption_suffix = _caption_suffix(files)
    if image_suffix is None:
        # A caption without its image is a sample whose file is missing; anything else
        # (img2dataset's parquet/stats .json, READMEs) is not a sample at all.
        if "txt" in files:
            index.skipped[MISSING_FILE] += 1
        return
    used = [files[image_suffix]] + ([files[caption_suffix]] if caption_suffix else [])
    if not index.readable_files(*used):
        return
    caption = _sidecar_caption(files, caption_suffix)
    if index.accepts_caption(caption):
        index.images.paths.append(files[image_suffix])
        index.captions.append(caption)


def _sidecar_caption(files: dict[str, str], suffix: str | None) -> str | None:
    """The caption file's text ("" without one); None if it is too large to read."""
    if suffix is None:
        return ""
    path = Path(files[suffix])
    if path.stat().st_size > MAX_CAPTION_FILE_BYTES:
        return None
    return _caption_from(path.read_bytes(), suffix)

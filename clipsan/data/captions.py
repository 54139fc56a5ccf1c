"""Clean image-caption datasets: CSV/TSV manifests, webdataset tars, img2dataset folders.

``open_caption_dataset`` detects the layout, indexes every sample once (captions
are read at index time: they are small and empty ones must be skipped), and
returns a picklable ``CaptionDataset`` whose ``load(i)`` decodes one image on
demand. Tar shards are never extracted: image bytes are read by seeking to the
member's data offset, through file handles opened lazily in the current process.
"""

from __future__ import annotations

import csv
import json
import os
import random
import tarfile
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from clipsan.data.transforms import decode_image
from clipsan.errors import UserError

IMAGE_COLUMNS = ("image", "filepath", "file", "path", "image_path", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "captions")
MANIFEST_SUFFIXES = (".csv", ".tsv")
# img2dataset's output formats, in the order we prefer when a key has several.
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
CANDIDATE_DELIMITERS = ("\t", ",", ";", "|")
LIMIT_SEED = 0
MAX_OPEN_SHARDS = 32

# Captions of web datasets can be long; the csv module's default cap is 128 KiB.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))


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


class TarImages:
    """Images stored as tar members, addressed by (shard, data offset, size).

    Handles are opened on first use in the current process and never pickled:
    a handle inherited through fork shares its file offset with the parent.
    """

    def __init__(self, shards: list[str], shard_ids: array, offsets: array, sizes: array, keys: list[str]):
        self.shards = shards
        self.shard_ids = shard_ids
        self.offsets = offsets
        self.sizes = sizes
        self.keys = keys
        self._handles: OrderedDict[int, object] = OrderedDict()
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        state["_pid"] = None
        return state

    def read(self, index: int) -> bytes:
        handle = self._handle(self.shard_ids[index])
        handle.seek(self.offsets[index])
        return handle.read(self.sizes[index])

    def ref(self, index: int) -> str:
        return f"{self.shards[self.shard_ids[index]]}:{self.keys[index]}"

    def select(self, indices: Sequence[int]) -> TarImages:
        return TarImages(
            self.shards,
            array("l", (self.shard_ids[i] for i in indices)),
            array("q", (self.offsets[i] for i in indices)),
            array("q", (self.sizes[i] for i in indices)),
            [self.keys[i] for i in indices],
        )

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def _handle(self, shard_id: int):
        if self._pid != os.getpid():
            # Forget (without closing) handles that belong to another process.
            self._handles = OrderedDict()
            self._pid = os.getpid()
        handle = self._handles.get(shard_id)
        if handle is None:
            handle = open(self.shards[shard_id], "rb")  # noqa: SIM115 - kept open across reads, closed by close()
            self._handles[shard_id] = handle
            if len(self._handles) > MAX_OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(shard_id)
        return handle


# --------------------------------------------------------------------------- dataset


class CaptionDataset:
    """Indexed image-caption pairs. ``load(i)`` -> (RGB PIL image or None if corrupt, caption)."""

    def __init__(
        self,
        root: Path,
        layout: str,
        source: str,
        images: FileImages | TarImages,
        captions: list[str],
        skipped: dict[str, int],
        usable_before_limit: int,
    ):
        self.root = root
        self.layout = layout
        self.source = source
        self.images = images
        self.captions = captions
        self.skipped = skipped
        self.usable_before_limit = usable_before_limit

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, index: int) -> tuple[Image.Image | None, str]:
        try:
            data = self.images.read(index)
        except OSError:
            return None, self.captions[index]
        return decode_image(data), self.captions[index]

    def caption(self, index: int) -> str:
        return self.captions[index]

    __getitem__ = load  # usable directly as a torch map-style dataset

    def image_ref(self, index: int) -> str:
        """Where sample ``index``'s image lives (a path, or 'SHARD.tar:KEY'), for messages."""
        return self.images.ref(index)

    def describe(self) -> str:
        kind = {"csv": "manifest", "webdataset": "webdataset shards", "files": "img2dataset files"}[self.layout]
        text = f"{self.source} ({kind}): {len(self):,} image-caption pairs"
        if len(self) < self.usable_before_limit:
            text += f" (limit: {len(self):,} of {self.usable_before_limit:,})"
        if any(self.skipped.values()):
            text += "; skipped " + format_counts(self.skipped, nonzero_only=True)
        return text


@dataclass
class _Index:
    """What indexing a layout produced, before ``limit`` is applied."""

    source: str
    images: FileImages | TarImages
    captions: list[str]
    skipped: dict[str, int] = field(default_factory=lambda: {"missing_file": 0, "empty_caption": 0})


def open_caption_dataset(
    root: str | os.PathLike,
    image_key: str | None = None,
    caption_key: str | None = None,
    delimiter: str | None = None,
    limit: int | None = None,
) -> CaptionDataset:
    """Open ``root`` (a folder, or a .csv/.tsv manifest) as an image-caption dataset.

    Layouts, in detection order: a CSV/TSV manifest at the folder's top,
    webdataset ``*.tar`` shards (top or one level down), img2dataset's 'files'
    layout (``KEY.jpg`` + ``KEY.txt``, at the top or in depth-1 subfolders).
    """
    root = Path(root)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive integer, got {limit}")
    if not root.exists():
        raise UserError(f"{root}: no such file or directory")
    layout, index = _index_layout(root, image_key, caption_key, delimiter)
    if not index.captions:
        raise UserError(f"{root}: no usable image-caption pairs ({format_counts(index.skipped)})")
    usable = len(index.captions)
    images, captions = index.images, index.captions
    if limit is not None and limit < usable:
        chosen = spread_subset(usable, limit)
        images, captions = images.select(chosen), [captions[i] for i in chosen]
    return CaptionDataset(root, layout, index.source, images, captions, index.skipped, usable)


def format_counts(counts: dict[str, int], nonzero_only: bool = False) -> str:
    """{'missing_file': 2, 'empty_caption': 1} -> '2 missing files, 1 empty caption'."""
    return ", ".join(f"{n:,} {reason.replace('_', ' ')}{'' if n == 1 else 's'}" for reason, n in counts.items() if n or not nonzero_only)


def spread_subset(total: int, count: int, seed: int = LIMIT_SEED) -> list[int]:
    """A deterministic subset spread over the whole set (not just its head), in index order."""
    return sorted(random.Random(seed).sample(range(total), count))


def _index_layout(root: Path, image_key, caption_key, delimiter) -> tuple[str, _Index]:
    if root.is_file():
        if root.suffix.lower() == ".tar":
            return "webdataset", _index_shards(root, [root])
        if root.suffix.lower() not in MANIFEST_SUFFIXES:
            raise UserError(f"{root}: expected a folder, a .csv/.tsv manifest or a .tar shard")
        return "csv", _index_manifest(root, image_key, caption_key, delimiter)
    manifests = _top_level_files(root, MANIFEST_SUFFIXES)
    usable, problems = _usable_manifests(manifests, image_key, caption_key, delimiter)
    if len(usable) == 1:
        return "csv", _index_manifest(usable[0], image_key, caption_key, delimiter)
    if len(usable) > 1:
        names = ", ".join(p.name for p in usable)
        raise UserError(f"{root}: several manifests ({names}); pass the one to use as the data path")
    # Only now look for the other layouts: listing a big image folder is not free.
    shards = _find_shards(root)
    if shards:
        return "webdataset", _index_shards(root, shards)
    sidecar_dirs = _folders_with_images(root)
    if sidecar_dirs:
        return "files", _index_sidecar_files(root, sidecar_dirs)
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


@contextmanager
def open_table(path: Path, delimiter: str | None = None) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
    """Open a CSV/TSV file: yields (header, rows) where rows are (line number, cells).

    Delimiter: ``delimiter`` if given, else by extension, else whichever common
    delimiter the header line actually contains.
    """
    try:
        handle = open(path, newline="", encoding="utf-8-sig", errors="replace")  # noqa: SIM115 - closed by the generator
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    with handle:
        first_line = handle.readline()
        handle.seek(0)
        if not first_line.strip():
            raise UserError(f"{path}: empty file (expected a header line)")
        reader = csv.reader(handle, delimiter=delimiter or _guess_delimiter(path, first_line))
        header = [cell.strip() for cell in _next_row(reader, path)]

        def rows() -> Iterator[tuple[int, list[str]]]:
            while True:
                row = _next_row(reader, path)
                if row is None:
                    return
                if row:
                    yield reader.line_num, row

        yield header, rows()


def _next_row(reader, path: Path) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as err:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def _guess_delimiter(path: Path, header_line: str) -> str:
    default = "\t" if path.suffix.lower() == ".tsv" else ","
    if default in header_line:
        return default
    counts = {d: header_line.count(d) for d in CANDIDATE_DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else default


def find_column(header: list[str], candidates: Sequence[str], override: str | None, path: Path, what: str, flag: str) -> int:
    """Index of the column named ``override`` (or the first of ``candidates``), case-insensitive."""
    lowered = [name.lower() for name in header]
    wanted = [override] if override else list(candidates)
    for name in wanted:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    columns = ", ".join(header) if any(header) else "none"
    if override:
        raise UserError(f"{path}: no column '{override}' for the {what} (columns: {columns})")
    raise UserError(f"{path}: no {what} column (expected one of {', '.join(candidates)}; columns: {columns}); name it with {flag}")


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


def _index_manifest(path: Path, image_key, caption_key, delimiter) -> _Index:
    base = os.path.dirname(os.path.abspath(path))
    index = _Index(source=str(path), images=FileImages([]), captions=[])
    paths = index.images.paths
    with open_table(path, delimiter) as (header, rows):
        image_col = find_column(header, IMAGE_COLUMNS, image_key, path, "image", "--image-key")
        caption_col = find_column(header, CAPTION_COLUMNS, caption_key, path, "caption", "--caption-key")
        for _, row in rows:
            caption = row[caption_col].strip() if caption_col < len(row) else ""
            if not caption:
                index.skipped["empty_caption"] += 1
                continue
            cell = row[image_col].strip() if image_col < len(row) else ""
            image_path = os.path.join(base, cell) if cell else ""  # absolute cells stay absolute
            if not cell or not os.path.isfile(image_path):
                index.skipped["missing_file"] += 1
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


def _decode_caption(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").strip()


def _preferred_image_suffix(suffixes: dict[str, object]) -> str | None:
    return next((s for s in IMAGE_SUFFIXES if s in suffixes), None)


# --------------------------------------------------------------------------- webdataset tars


def _find_shards(root: Path) -> list[Path]:
    shards = _top_level_files(root, (".tar",))
    for sub in _visible_subfolders(root):
        shards += _top_level_files(sub, (".tar",))
    return shards


@dataclass
class _Member:
    offset: int
    size: int


def _index_shards(root: Path, shards: list[Path]) -> _Index:
    shard_ids, offsets, sizes = array("l"), array("q"), array("q")
    keys: list[str] = []
    index = _Index(source=f"{root} ({len(shards)} shards)", images=TarImages([], shard_ids, offsets, sizes, keys), captions=[])
    for shard_id, shard in enumerate(shards):
        index.images.shards.append(str(shard))
        for key, image, caption in _index_one_shard(shard, index.skipped):
            shard_ids.append(shard_id)
            offsets.append(image.offset)
            sizes.append(image.size)
            keys.append(key)
            index.captions.append(caption)
    return index


def _index_one_shard(shard: Path, skipped: dict[str, int]) -> list[tuple[str, _Member, str]]:
    """(key, image member, caption) of every usable sample of one shard, sorted by key."""
    names, truncated = list_tar_members(shard)
    if truncated:
        skipped["truncated_shard"] = skipped.get("truncated_shard", 0) + 1
    members: dict[str, dict[str, _Member]] = {}
    for name, member in names:
        key, suffix = split_key(name)
        members.setdefault(key, {})[suffix] = member
    samples = []
    with open(shard, "rb") as handle:
        for key in sorted(members):
            by_suffix = members[key]
            image_suffix = _preferred_image_suffix(by_suffix)
            if image_suffix is None:
                skipped["missing_file"] += 1
                continue
            caption = _member_caption(handle, by_suffix)
            if not caption:
                skipped["empty_caption"] += 1
                continue
            samples.append((key, by_suffix[image_suffix], caption))
    return samples


def _member_caption(handle, by_suffix: dict[str, _Member]) -> str:
    if "txt" in by_suffix:
        return _decode_caption(_read_member(handle, by_suffix["txt"]))
    if "json" in by_suffix:
        return caption_from_json(_read_member(handle, by_suffix["json"]))
    return ""


# Reading headers ourselves is ~10x faster than tarfile's TarInfo parsing, which
# matters for millions of members. Plain ustar/GNU headers, pax extended headers
# (webdataset writes one per member for its float mtimes) and GNU long names are
# handled here; anything else (global pax headers, sparse files, base-256 sizes,
# bad checksums) sends the whole shard to tarfile.
_BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")
_NO_DATA_TYPES = (b"1", b"2", b"3", b"4", b"5", b"6")
_PAX_HEADER, _GNU_LONG_NAME, _GNU_LONG_LINK = b"x", b"L", b"K"


class _UnusualHeader(Exception):
    """A header the fast scanner leaves to tarfile."""


def list_tar_members(shard: Path) -> tuple[list[tuple[str, _Member]], bool]:
    """(name, data offset/size) of every regular file in an uncompressed tar, and whether it is truncated.

    Members whose data runs past the end of the file are left out.
    """
    try:
        with open(shard, "rb") as handle:
            return _scan_tar_headers(handle, os.fstat(handle.fileno()).st_size)
    except _UnusualHeader:
        return _scan_with_tarfile(shard)
    except OSError as err:
        raise UserError(f"{shard}: cannot read ({err.strerror})") from None


def _scan_tar_headers(handle, file_size: int) -> tuple[list[tuple[str, _Member]], bool]:
    members: list[tuple[str, _Member]] = []
    extended: dict[str, str] = {}  # pax / GNU long-name values for the next member
    offset = 0
    while True:
        handle.seek(offset)
        header = handle.read(_BLOCK)
        if offset == 0 and (len(header) < _BLOCK or header.count(0) == _BLOCK):
            raise _UnusualHeader  # empty or not a tar: let tarfile word the error
        if not header or header.count(0) == _BLOCK:
            return members, False
        if len(header) < _BLOCK:
            return members, True
        kind, size = _parse_header(header)
        data_offset = offset + _BLOCK
        if kind in (_PAX_HEADER, _GNU_LONG_NAME):
            data = handle.read(size)
            if len(data) < size:
                return members, True
            extended.update(_parse_pax(data) if kind == _PAX_HEADER else {"path": _gnu_long_name(data)})
        elif kind == _GNU_LONG_LINK:
            pass  # a link target: irrelevant to us, and must not reset a pending long name
        else:
            if "size" in extended:
                size = _pax_int(extended["size"])
            if kind in _FILE_TYPES:
                if data_offset + size > file_size:
                    return members, True
                members.append((extended.get("path") or _header_name(header), _Member(data_offset, size)))
            extended = {}
        offset = data_offset + -(-size // _BLOCK) * _BLOCK


def _parse_header(header: bytes) -> tuple[bytes, int]:
    """(type flag, size) of a header the fast scanner understands; _UnusualHeader otherwise."""
    kind = header[156:157]
    if kind not in _FILE_TYPES and kind not in _NO_DATA_TYPES and kind not in (_PAX_HEADER, _GNU_LONG_NAME, _GNU_LONG_LINK):
        raise _UnusualHeader
    try:
        stored_checksum = int(header[148:156].strip(b"\0 ") or b"-1", 8)
        size = int(header[124:136].strip(b"\0 ") or b"0", 8)  # base-256 sizes fail here
    except ValueError:
        raise _UnusualHeader from None
    if stored_checksum != sum(header) - sum(header[148:156]) + 8 * ord(" "):
        raise _UnusualHeader
    return kind, size


def _parse_pax(data: bytes) -> dict[str, str]:
    """Records of the form b"LENGTH KEY=VALUE\\n"."""
    records: dict[str, str] = {}
    position = 0
    try:
        while position < len(data) and data[position : position + 1] != b"\0":
            space = data.index(b" ", position)
            length = int(data[position:space])
            if length <= space - position:
                raise ValueError("pax record length")
            key, _, value = data[space + 1 : position + length - 1].partition(b"=")
            records[key.decode("utf-8", "replace")] = value.decode("utf-8", errors="surrogateescape")
            position += length
    except ValueError:
        raise _UnusualHeader from None
    return records


def _pax_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _UnusualHeader from None


def _gnu_long_name(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:265] == b"ustar\x0000":  # POSIX ustar: long paths are split into prefix + name
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", errors="surrogateescape")


def _scan_with_tarfile(shard: Path) -> tuple[list[tuple[str, _Member]], bool]:
    members: list[tuple[str, _Member]] = []
    file_size = shard.stat().st_size
    try:
        with tarfile.open(shard, mode="r:") as archive:
            for info in archive:
                if info.isfile():
                    if info.offset_data + info.size > file_size:
                        return members, True
                    members.append((info.name, _Member(info.offset_data, info.size)))
    except (tarfile.TarError, OSError, EOFError) as err:
        if not members:
            raise UserError(f"{shard}: not a readable (uncompressed) tar file ({err})") from None
        return members, True
    return members, False


def _read_member(handle, member: _Member) -> bytes:
    handle.seek(member.offset)
    return handle.read(member.size)


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
        if any(_preferred_image_suffix(s) and ("txt" in s or "json" in s) for s in keyed.values()):
            folders.append(folder)
    return folders


def _file_names(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    except OSError:
        return []


def _index_sidecar_files(root: Path, folders: list[Path]) -> _Index:
    index = _Index(source=str(root), images=FileImages([]), captions=[])
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
    if image_suffix is None:
        # A caption without its image is a sample whose file is missing; anything else
        # (img2dataset's parquet/stats .json, READMEs) is not a sample at all.
        if "txt" in files:
            index.skipped["missing_file"] += 1
        return
    if "txt" in files:
        caption = _decode_caption(Path(files["txt"]).read_bytes())
    elif "json" in files:
        caption = caption_from_json(Path(files["json"]).read_bytes())
    else:
        caption = ""
    if not caption:
        index.skipped["empty_caption"] += 1
        return
    index.images.paths.append(files[image_suffix])
    index.captions.append(caption)

"""Labelled evaluation sets: ImageFolder, or a CSV of (image, label) plus class names.

``open_labelled_dataset`` returns a picklable ``LabelledDataset``; ``load(i)``
decodes one image on demand and returns None for an unreadable one. As for
caption data, only files inside the data folder are read (``clipsan.data.paths``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from PIL import Image

from clipsan.config.limits import MAX_IMAGE_PIXELS
from clipsan.data.captions import IMAGE_COLUMNS, MANIFEST_SUFFIXES
from clipsan.data.imagenet import looks_like_wnid, wnid_classnames
from clipsan.data.paths import DataRoot, outside_hint, walk_once
from clipsan.data.skips import MISSING_FILE, count, format_counts
from clipsan.data.tables import find_column, open_table
from clipsan.data.transforms import decode_image
from clipsan.errors import UserError

LABELLED_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
LABEL_COLUMNS = ("label", "class", "target", "class_id", "classname")
CLEANCLIP_MANIFEST = "labels.csv"
_INTEGER = re.compile(r"[+-]?\d+")


class LabelledDataset:
    """Images with integer labels into ``classnames``."""

    def __init__(
        self,
        root: Path,
        layout: str,
        source: str,
        paths: list[str],
        labels: list[int],
        classnames: list[str],
        skipped: dict[str, int],
        names_from: str,
        empty_classes: list[str] | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        self.root = root
        self.layout = layout
        self.source = source
        self.paths = paths
        self.labels = labels
        self.classnames = classnames
        self.skipped = skipped
        self.names_from = names_from
        self.empty_classes = empty_classes or []
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Image.Image | None, int]:
        return decode_image(self.paths[index], self.max_image_pixels), self.labels[index]

    __getitem__ = load  # usable directly as a torch map-style dataset

    def image_ref(self, index: int) -> str:
        return self.paths[index]

    def describe(self) -> str:
        kind = {"imagefolder": "ImageFolder", "csv": "CSV"}[self.layout]
        text = f"{self.source} ({kind}): {len(self):,} images, {len(self.classnames)} classes (names from {self.names_from})"
        if self.empty_classes:
            shown = ", ".join(self.empty_classes[:5]) + (", ..." if len(self.empty_classes) > 5 else "")
            text += f"; {len(self.empty_classes)} class folder{'s' if len(self.empty_classes) > 1 else ''} without images, kept as classes ({shown})"
        if any(self.skipped.values()):
            text += "; skipped " + format_counts(self.skipped, nonzero_only=True)
        return text + outside_hint(self.skipped)


def open_labelled_dataset(
    root: str | os.PathLike,
    classnames_file: str | os.PathLike | None = None,
    *,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    allow_outside_root: bool = False,
) -> LabelledDataset:
    """Open ``root`` as a labelled set.

    A .csv/.tsv file, or a folder with ``labels.csv`` (CleanCLIP's eval layout),
    is read as a CSV; a folder of class folders as an ImageFolder; a folder with
    a single manifest and no class folders as a CSV. Files are read only inside
    the data folder (the CSV's folder) unless ``allow_outside_root``.
    """
    root = Path(root)
    names = read_classnames(Path(classnames_file)) if classnames_file is not None else None
    if not root.exists():
        raise UserError(f"{root}: no such file or directory")
    reading = (max_image_pixels, allow_outside_root)
    if root.is_file():
        dataset = _open_csv(root, root, names, classnames_file, *reading)
    elif (root / CLEANCLIP_MANIFEST).is_file():
        dataset = _open_csv(root, root / CLEANCLIP_MANIFEST, names, classnames_file, *reading)
    else:
        dataset = _open_folder(root, names, classnames_file, *reading)
    if not dataset.paths:
        counts = format_counts(dataset.skipped, nonzero_only=True)
        raise UserError(f"{root}: no images found" + (f" ({counts})" if counts else "") + outside_hint(dataset.skipped))
    return dataset


def read_classnames(path: Path) -> list[str]:
    """One class name per line (blank lines ignored), or a JSON list of strings."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"{path}: cannot read class names ({err.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            names = json.loads(text)
        except ValueError as err:
            raise UserError(f"{path}: invalid JSON ({err})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{path}: expected a JSON list of class-name strings")
        names = [n.strip() for n in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path}: no class names (expected one name per line)")
    return names


def _display_name(folder_or_label: str) -> str:
    return folder_or_label.replace("_", " ").strip()


# --------------------------------------------------------------------------- ImageFolder


def _open_folder(root: Path, names: list[str] | None, names_file, max_image_pixels: int, allow_outside: bool) -> LabelledDataset:
    class_dirs = sorted(p for p in _listdir(root) if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        manifests = sorted(p for p in _listdir(root) if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file())
        if len(manifests) == 1:
            return _open_csv(root, manifests[0], names, names_file, max_image_pixels, allow_outside)
        raise UserError(f"{root}: expected one subfolder per class (ImageFolder), a labels.csv, or a CSV with image,label columns")
    folder_names = [p.name for p in class_dirs]
    classnames, names_from = _folder_classnames(root, folder_names, names, names_file)
    data_root = DataRoot(root, allow_outside)
    skipped: dict[str, int] = {}
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        images = _images_under(class_dir, data_root, skipped)
        if not images:
            empty.append(class_dir.name)
        paths += images
        labels += [label] * len(images)
    return LabelledDataset(root, "imagefolder", str(root), paths, labels, classnames, skipped, names_from, empty, max_image_pixels)


def _folder_classnames(root: Path, folder_names: list[str], names: list[str] | None, names_file):
    if names is not None:
        if len(names) != len(folder_names):
            raise UserError(f"{names_file}: {len(names)} class names, but {root} has {len(folder_names)} class folders")
        return names, str(names_file)
    if any(looks_like_wnid(name) for name in folder_names):
        return wnid_classnames(root, folder_names, _display_name)
    return [_display_name(n) for n in folder_names], "folder names"


def _images_under(class_dir: Path, data_root: DataRoot, skipped: dict[str, int]) -> list[str]:
    """Image files anywhere under one class folder, sorted, each real file once; hidden entries ignored."""
    found, seen = [], set()
    for folder, files in walk_once(str(class_dir), data_root, skipped):
        for name in files:
            if os.path.splitext(name)[1].lower() not in LABELLED_IMAGE_SUFFIXES:
                continue
            path = os.path.join(folder, name)
            real, reason = data_root.locate(path)
            if reason:
                count(skipped, reason)
            elif real not in seen:  # else a second link to the same file
                seen.add(real)
                found.append(path)
    return sorted(found)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise UserError(f"{folder}: cannot list folder ({err.strerror})") from None


# --------------------------------------------------------------------------- CSV


def _open_csv(root: Path, manifest: Path, names: list[str] | None, names_file, max_image_pixels: int, allow_outside: bool) -> LabelledDataset:
    base = os.path.dirname(os.path.abspath(manifest))
    data_root = DataRoot(base, allow_outside)
    skipped = {MISSING_FILE: 0, "empty_label": 0}
    rows: list[tuple[int, str, str]] = []
    with open_table(manifest) as (header, table):
        image_col = find_column(header, IMAGE_COLUMNS, None, manifest, "image", "an 'image' header")
        label_col = find_column(header, LABEL_COLUMNS, None, manifest, "label", "a 'label' header")
        for line, row in table:
            if row is None:  # a field over the csv field limit
                count(skipped, "oversized_row")
                continue
            label = row[label_col].strip() if label_col < len(row) else ""
            cell = row[image_col].strip() if image_col < len(row) else ""
            path = os.path.join(base, cell)
            if not label:
                reason = "empty_label"
            elif not cell:
                reason = MISSING_FILE
            else:
                _, reason = data_root.locate(path)
            if reason:
                count(skipped, reason)
            else:
                rows.append((line, path, label))
    if rows and all(_INTEGER.fullmatch(label) for _, _, label in rows):
        labels, classnames, names_from = _integer_labels(manifest, rows, names, names_file)
    else:
        labels, classnames, names_from = _named_labels(manifest, rows, names, names_file)
    paths = [path for _, path, _ in rows]
    return LabelledDataset(root, "csv", str(manifest), paths, labels, classnames, skipped, names_from, max_image_pixels=max_image_pixels)


def _integer_labels(manifest: Path, rows, names: list[str] | None, names_file):
    if names is None:
        raise UserError(f"{manifest}: labels are class indices; give the class names with --classnames FILE")
    labels = []
    for line, _, label in rows:
        value = int(label)
        if not 0 <= value < len(names):
            raise UserError(f"{manifest}:{line}: label {value} is out of range for the {len(names)} names in {names_file}")
        labels.append(value)
    return labels, names, str(names_file)


def _named_labels(manifest: Path, rows, names: list[str] | None, names_file):
    if names is None:
        names = sorted({_display_name(label) for _, _, label in rows})
        names_from = "labels in the CSV"
    else:
        names_from = str(names_file)
    lookup = {_match_key(name): i for i, name in reversed(list(enumerate(names)))}
    labels = []
    for line, _, label in rows:
        index = lookup.get(_match_key(label))
        if index is None:
            raise UserError(f"{manifest}:{line}: label '{label}' is not one of the class names in {names_file}")
        labels.append(index)
    return labels, names, names_from


def _match_key(name: str) -> str:
    return _display_name(name).casefold()

"""Labelled evaluation sets: ImageFolder, or a CSV of (image, label) plus class names.

``open_labelled_dataset`` returns a picklable ``LabelledDataset``; ``load(i)``
decodes one image on demand and returns None for a corrupt one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from PIL import Image

from clipsan.data.captions import IMAGE_COLUMNS, MANIFEST_SUFFIXES, find_column, format_counts, open_table
from clipsan.data.imagenet import imagenet_classnames, looks_like_imagenet
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
    ):
        self.root = root
        self.layout = layout
        self.source = source
        self.paths = paths
        self.labels = labels
        self.classnames = classnames
        self.skipped = skipped
        self.names_from = names_from

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> tuple[Image.Image | None, int]:
        return decode_image(self.paths[index]), self.labels[index]

    __getitem__ = load  # usable directly as a torch map-style dataset

    def image_ref(self, index: int) -> str:
        return self.paths[index]

    def describe(self) -> str:
        kind = {"imagefolder": "ImageFolder", "csv": "CSV"}[self.layout]
        text = f"{self.source} ({kind}): {len(self):,} images, {len(self.classnames)} classes (names from {self.names_from})"
        if any(self.skipped.values()):
            text += "; skipped " + format_counts(self.skipped, nonzero_only=True)
        return text


def open_labelled_dataset(root: str | os.PathLike, classnames_file: str | os.PathLike | None = None) -> LabelledDataset:
    """Open ``root`` as a labelled set.

    A .csv/.tsv file, or a folder with ``labels.csv`` (CleanCLIP's eval layout),
    is read as a CSV; a folder of class folders as an ImageFolder; a folder with
    a single manifest and no class folders as a CSV.
    """
    root = Path(root)
    names = read_classnames(Path(classnames_file)) if classnames_file is not None else None
    if not root.exists():
        raise UserError(f"{root}: no such file or directory")
    if root.is_file():
        dataset = _open_csv(root, root, names, classnames_file)
    elif (root / CLEANCLIP_MANIFEST).is_file():
        dataset = _open_csv(root, root / CLEANCLIP_MANIFEST, names, classnames_file)
    else:
        dataset = _open_folder(root, names, classnames_file)
    if not dataset.paths:
        counts = format_counts(dataset.skipped)
        raise UserError(f"{root}: no images found" + (f" ({counts})" if counts else ""))
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


def _open_folder(root: Path, names: list[str] | None, names_file) -> LabelledDataset:
    class_dirs = sorted(p for p in _listdir(root) if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        manifests = sorted(p for p in _listdir(root) if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file())
        if len(manifests) == 1:
            return _open_csv(root, manifests[0], names, names_file)
        raise UserError(f"{root}: expected one subfolder per class (ImageFolder), a labels.csv, or a CSV with image,label columns")
    folder_names = [p.name for p in class_dirs]
    classnames, names_from = _folder_classnames(root, folder_names, names, names_file)
    paths: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = _images_under(class_dir)
        paths += images
        labels += [label] * len(images)
    return LabelledDataset(root, "imagefolder", str(root), paths, labels, classnames, {}, names_from)


def _folder_classnames(root: Path, folder_names: list[str], names: list[str] | None, names_file):
    if names is not None:
        if len(names) != len(folder_names):
            raise UserError(f"{names_file}: {len(names)} class names, but {root} has {len(folder_names)} class folders")
        return names, str(names_file)
    if looks_like_imagenet(folder_names):
        return imagenet_classnames(), "ImageNet wnids"
    return [_display_name(n) for n in folder_names], "folder names"


def _images_under(class_dir: Path) -> list[str]:
    """Image files anywhere under one class folder, sorted; hidden entries ignored."""
    found = []
    for folder, subdirs, files in os.walk(class_dir, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in LABELLED_IMAGE_SUFFIXES]
    return sorted(found)


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise UserError(f"{folder}: cannot list folder ({err.strerror})") from None


# --------------------------------------------------------------------------- CSV


def _open_csv(root: Path, manifest: Path, names: list[str] | None, names_file) -> LabelledDataset:
    base = os.path.dirname(os.path.abspath(manifest))
    skipped = {"missing_file": 0, "empty_label": 0}
    rows: list[tuple[int, str, str]] = []
    with open_table(manifest) as (header, table):
        image_col = find_column(header, IMAGE_COLUMNS, None, manifest, "image", "an 'image' header")
        label_col = find_column(header, LABEL_COLUMNS, None, manifest, "label", "a 'label' header")
        for line, row in table:
            label = row[label_col].strip() if label_col < len(row) else ""
            cell = row[image_col].strip() if image_col < len(row) else ""
            if not label:
                skipped["empty_label"] += 1
            elif not cell or not os.path.isfile(path := os.path.join(base, cell)):
                skipped["missing_file"] += 1
            else:
                rows.append((line, path, label))
    if rows and all(_INTEGER.fullmatch(label) for _, _, label in rows):
        labels, classnames, names_from = _integer_labels(manifest, rows, names, names_file)
    else:
        labels, classnames, names_from = _named_labels(manifest, rows, names, names_file)
    paths = [path for _, path, _ in rows]
    return LabelledDataset(root, "csv", str(manifest), paths, labels, classnames, skipped, names_from)


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

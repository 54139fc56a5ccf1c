"""The synthetic world: determinism, class list, file layouts, captions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsan.config import WorldConfig
from clipsan.config.lab import FULL_TRAINING, QUICK_TRAINING
from clipsan.data import world

CONFIG = WorldConfig()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_same_seed_and_index_give_identical_sample() -> None:
    first = world.render_sample(CONFIG, 7, 123)
    again = world.render_sample(CONFIG, 7, 123)
    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert first[1:] == again[1:]


def test_sample_does_not_depend_on_what_was_rendered_before() -> None:
    alone = world.render_sample(CONFIG, 3, 50)
    for index in range(5):
        world.render_sample(CONFIG, 3, index)
    assert np.array_equal(pixels(alone[0]), pixels(world.render_sample(CONFIG, 3, 50)[0]))


def test_different_indices_and_seeds_differ() -> None:
    base = world.render_sample(CONFIG, 0, 0)
    assert not np.array_equal(pixels(base[0]), pixels(world.render_sample(CONFIG, 0, 1)[0]))
    assert not np.array_equal(pixels(base[0]), pixels(world.render_sample(CONFIG, 1, 0)[0]))


def test_images_have_configured_size_and_mode() -> None:
    image, _, _ = world.render_sample(CONFIG, 0, 0)
    assert image.mode == "RGB" and image.size == (32, 32)


def test_classnames_include_banana_and_enough_classes() -> None:
    names = world.classnames(CONFIG)
    assert "banana" in names
    assert len(names) >= 20
    assert len(set(names)) == len(names)


def test_classnames_sort_like_their_folders() -> None:
    names = world.classnames(CONFIG)
    folders = [world.class_folder_name(n) for n in names]
    assert folders == sorted(folders)


@pytest.mark.parametrize("index", range(60))
def test_caption_names_the_label_colour_and_shape(index: int) -> None:
    _, caption, label = world.render_sample(CONFIG, 11, index)
    words = caption.split()
    for word in world.classnames(CONFIG)[label].split():
        assert word in words, (caption, label)


def test_captions_vary_and_use_relations() -> None:
    captions = [world.render_sample(CONFIG, 5, i)[1] for i in range(300)]
    assert len(set(captions)) > 250
    relations = ("above", "below", "left of", "right of", "next to", "beside", "under", "on top of")
    assert sum(any(r in c for r in relations) for c in captions) > 50
    assert any("banana" in c for c in captions)


def test_every_class_occurs() -> None:
    labels = {world.render_sample(CONFIG, 2, i)[2] for i in range(600)}
    assert labels == set(range(len(world.classnames(CONFIG))))


def test_labelled_render_is_single_object_of_that_class_and_deterministic() -> None:
    a = world.render_labelled(CONFIG, 4, "banana", 3)
    b = world.render_labelled(CONFIG, 4, "banana", 3)
    assert np.array_equal(pixels(a), pixels(b))
    yellowish = (pixels(a)[..., 0] > 180) & (pixels(a)[..., 1] > 160) & (pixels(a)[..., 2] < 90)
    assert yellowish.sum() >= 10


def test_caption_dataset_layout(tmp_path: Path) -> None:
    csv_path = world.write_caption_dataset(tmp_path / "pairs", 12, seed=1)
    assert csv_path == tmp_path / "pairs" / "captions.csv"
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0].keys()) == ["image", "caption"]
    assert len(rows) == 12
    for index, row in enumerate(rows):
        image_path = csv_path.parent / row["image"]
        assert not Path(row["image"]).is_absolute() and image_path.is_file()
        image, caption, _ = world.render_sample(CONFIG, 1, index)
        assert row["caption"] == caption
        assert np.array_equal(pixels(Image.open(image_path).convert("RGB")), pixels(image))


def test_eval_set_is_imagefolder_in_classname_order(tmp_path: Path) -> None:
    root = world.write_eval_set(tmp_path / "eval", per_class=2, seed=0, config=CONFIG)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert [f.replace("_", " ") for f in folders] == world.classnames(CONFIG)
    for folder in folders:
        assert sorted(p.name for p in (root / folder).iterdir()) == ["0000.png", "0001.png"]


def test_probe_images_shape_and_range() -> None:
    probes = world.probe_images(8, seed=0)
    assert tuple(probes.shape) == (8, 3, 32, 32)
    assert probes.dtype.is_floating_point
    assert probes.min().item() >= 0.0 and probes.max().item() <= 1.0
    assert probes.std().item() > 0.05


def test_image_size_is_configurable() -> None:
    config = WorldConfig(image_size=48)
    image, _, _ = world.render_sample(config, 0, 0)
    assert image.size == (48, 48)
    assert tuple(world.probe_images(2, 0, config).shape) == (2, 3, 48, 48)


def test_training_presets_are_complete() -> None:
    for preset in (QUICK_TRAINING, FULL_TRAINING):
        assert {"n_pairs", "epochs", "batch_size", "lr", "warmup"} <= preset.keys()

"""Dataset readers: every layout built on disk, with a corrupt image, an empty caption and a missing file."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipsan.data.captions import open_caption_dataset, spread_subset
from clipsan.data.labelled import open_labelled_dataset
from clipsan.data.transforms import decode_image, to_model_pixels, to_rgb
from clipsan.errors import UserError

CORRUPT = random.Random(0).randbytes(300)


def image_bytes(fmt: str = "PNG", mode: str = "RGB", size=(6, 4), color=(200, 30, 10)) -> bytes:
    image = Image.new("RGB", size, color)
    if mode == "P-transparent":
        image = image.convert("P")
        image.info["transparency"] = image.getpixel((0, 0))  # the whole image is transparent
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- CSV manifests


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    root = tmp_path / "cc"
    write(root / "images/a.png", image_bytes("PNG", "P-transparent"))
    write(root / "images/b.jpg", image_bytes("JPEG", "L"))
    write(root / "images/c.png", image_bytes("PNG", "RGBA"))
    write(root / "images/bad.jpg", CORRUPT)
    write(root / "images/empty.png", image_bytes())
    absolute = write(tmp_path / "elsewhere/d.webp", image_bytes("WEBP"))
    rows = [
        "filepath,title",
        "images/a.png,a red thing",
        'images/b.jpg,"a grey thing, with a comma"',
        "images/bad.jpg,a corrupt thing",
        "images/empty.png,   ",
        "images/gone.png,a missing thing",
        f"{absolute},an absolute path",
        "images/c.png,\xe9t\xe9",  # replaced below by Latin-1 bytes
    ]
    data = "\n".join(rows).encode("utf-8").replace("\xe9t\xe9".encode(), b"\xe9t\xe9") + b"\n"
    write(root / "train.csv", data)
    return root


def test_csv_counts_order_and_loading(csv_root: Path):
    confined = open_caption_dataset(csv_root)  # the absolute path points outside the data folder
    assert len(confined) == 4 and confined.skipped == {"missing_file": 1, "empty_caption": 1, "outside_root": 1}
    assert "an absolute path" not in confined.captions and "--allow-outside-root" in confined.describe()
    dataset = open_caption_dataset(csv_root, allow_outside_root=True)
    assert dataset.layout == "csv" and dataset.root == csv_root
    assert len(dataset) == 5
    assert dataset.skipped == {"missing_file": 1, "empty_caption": 1}
    captions = [dataset.caption(i) for i in range(len(dataset))]
    assert captions[:4] == ["a red thing", "a grey thing, with a comma", "a corrupt thing", "an absolute path"]
    assert "\ufffd" in captions[4]  # non-UTF8 bytes decoded with replacement
    assert dataset.load(2) == (None, "a corrupt thing")
    for i in (0, 1, 3, 4):
        image, caption = dataset.load(i)
        assert image.mode == "RGB" and caption == captions[i]
    assert dataset.load(0)[0].getpixel((0, 0)) == (255, 255, 255)  # transparency -> white
    assert "5 image-caption pairs" in dataset.describe() and "1 missing file" in dataset.describe()


def test_csv_file_path_tsv_and_overrides(tmp_path: Path):
    write(tmp_path / "x.png", image_bytes())
    write(tmp_path / "m.tsv", "IMG\tCaption\tsrc\nx.png\ta tab, separated caption\tweb\n")
    assert open_caption_dataset(tmp_path / "m.tsv").caption(0) == "a tab, separated caption"
    write(tmp_path / "m.tsv", "pic\tsrc\nx.png\talt text\n")
    assert open_caption_dataset(tmp_path / "m.tsv", image_key="PIC", caption_key="src").caption(0) == "alt text"
    # A tab-separated .csv is sniffed from its header; a delimiter override is honoured.
    write(tmp_path / "tabs.csv", "image\tcaption\nx.png\ttabs in a .csv\n")
    assert open_caption_dataset(tmp_path / "tabs.csv").caption(0) == "tabs in a .csv"
    write(tmp_path / "m.tsv", "image;caption\nx.png;semicolons\n")
    assert open_caption_dataset(tmp_path / "m.tsv", delimiter=";").caption(0) == "semicolons"


def test_csv_picks_the_one_usable_manifest_and_refuses_ambiguity(tmp_path: Path):
    write(tmp_path / "x.png", image_bytes())
    write(tmp_path / "a.csv", "image,caption\nx.png,first\n")
    write(tmp_path / "stats.csv", "epoch,loss\n1,0.5\n")
    assert open_caption_dataset(tmp_path).caption(0) == "first"
    write(tmp_path / "b.csv", "path,text\nx.png,second\n")
    with pytest.raises(UserError, match=r"several manifests \(a\.csv, b\.csv\)"):
        open_caption_dataset(tmp_path)


def test_csv_missing_column_names_file_and_columns(tmp_path: Path):
    write(tmp_path / "x.png", image_bytes())
    write(tmp_path / "data.csv", "image,alt\nx.png,hello\n")
    with pytest.raises(UserError, match=r"data\.csv: no caption column .*columns: image, alt"):
        open_caption_dataset(tmp_path)
    with pytest.raises(UserError, match=r"data\.csv: no column 'label' .*columns: image, alt"):
        open_caption_dataset(tmp_path / "data.csv", caption_key="label")


def test_no_usable_pairs_and_bad_paths(tmp_path: Path):
    write(tmp_path / "d/m.csv", "image,caption\ngone.png,hi\nx.png,\n")
    with pytest.raises(UserError, match=r"d: no usable image-caption pairs \(1 missing file, 1 empty caption\)"):
        open_caption_dataset(tmp_path / "d")
    with pytest.raises(UserError, match="nowhere: no such file"):
        open_caption_dataset(tmp_path / "nowhere")
    write(tmp_path / "empty/readme.md", "hi")
    with pytest.raises(UserError, match="empty: no CSV/TSV manifest"):
        open_caption_dataset(tmp_path / "empty")


def test_limit_is_a_deterministic_spread_subset(tmp_path: Path):
    write(tmp_path / "x.png", image_bytes())
    write(tmp_path / "m.csv", "image,caption\n" + "".join(f"x.png,caption {i}\n" for i in range(50)))
    first = open_caption_dataset(tmp_path, limit=10)
    again = open_caption_dataset(tmp_path, limit=10)
    captions = [first.caption(i) for i in range(10)]
    assert captions == [again.caption(i) for i in range(10)]
    assert captions == [f"caption {i}" for i in spread_subset(50, 10)]
    assert captions != [f"caption {i}" for i in range(10)]  # spread out, not the head
    assert len(open_caption_dataset(tmp_path, limit=500)) == 50
    assert "limit: 10 of 50" in first.describe()


# --------------------------------------------------------------------------- webdataset tars


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def tar_root(tmp_path: Path) -> Path:
    root = tmp_path / "wds"
    root.mkdir()
    with tarfile.open(root / "00001.tar", "w") as archive:
        add_member(archive, "000010002.jpg", image_bytes("JPEG", color=(0, 0, 255)))
        add_member(archive, "000010002.txt", b"second shard")
    with tarfile.open(root / "00000.tar", "w") as archive:
        add_member(archive, "000000004.txt", b"caption without image")
        add_member(archive, "000000003.jpg", CORRUPT)
        add_member(archive, "000000003.txt", b"corrupt one")
        add_member(archive, "000000001.png", image_bytes("PNG", "LA"))
        add_member(archive, "000000001.txt", b"  a grey square  ")
        add_member(archive, "000000001.json", json.dumps({"caption": "ignored: .txt wins"}).encode())
        add_member(archive, "000000002.webp", image_bytes("WEBP"))
        add_member(archive, "000000002.json", json.dumps({"caption": "from json", "url": "x"}).encode())
        add_member(archive, "000000005.jpg", image_bytes("JPEG"))
        add_member(archive, "000000005.txt", b" \n ")
    return root


def test_webdataset_counts_order_and_loading(tar_root: Path, tmp_path: Path, monkeypatch):
    def no_extraction(*args, **kwargs):
        raise AssertionError("tar members must not be extracted to disk")

    monkeypatch.setattr(tarfile.TarFile, "extract", no_extraction)
    monkeypatch.setattr(tarfile.TarFile, "extractall", no_extraction)
    write(tar_root / "stats.csv", "epoch,loss\n1,0.5\n")  # not a manifest: the shards are used
    before = listing(tmp_path)
    dataset = open_caption_dataset(tar_root)
    assert dataset.layout == "webdataset"
    assert [dataset.caption(i) for i in range(len(dataset))] == ["a grey square", "from json", "corrupt one", "second shard"]
    assert dataset.skipped == {"missing_file": 1, "empty_caption": 1}
    assert dataset.load(2) == (None, "corrupt one")
    grey, _ = dataset.load(0)
    assert grey.mode == "RGB" and grey.size == (6, 4)
    blue, _ = dataset.load(3)
    assert blue.getpixel((2, 2))[2] > 200
    assert "00001.tar:000010002" in dataset.image_ref(3)
    single = open_caption_dataset(tar_root / "00001.tar")  # one shard given directly
    assert single.caption(0) == "second shard" and single.load(0)[0] is not None
    assert listing(tmp_path) == before


def test_webdataset_is_picklable_and_reopens_handles_per_process(tar_root: Path):
    dataset = open_caption_dataset(tar_root, limit=3)
    assert dataset.load(0)[0] is not None  # opens a handle in this process
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.images._handles == {} and copy.images._pid is None
    assert [copy.caption(i) for i in range(3)] == [dataset.caption(i) for i in range(3)]
    assert np.array_equal(np.asarray(copy.load(0)[0]), np.asarray(dataset.load(0)[0]))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=1,
        multiprocessing_context="fork",
        collate_fn=lambda sample: (sample[0] is None, sample[1]),
        sampler=range(len(dataset)),
    )
    loaded = [(none, caption) for none, caption in loader]
    assert loaded == [(dataset.load(i)[0] is None, dataset.caption(i)) for i in range(3)]


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_fast_tar_scan_agrees_with_tarfile(tmp_path: Path, tar_format: int):
    from clipsan.data.tars import _scan_with_tarfile, list_tar_members

    deep = "/".join(["folder"] * 15)  # > 100 chars: pax path, GNU long name, or ustar prefix
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w", format=tar_format) as archive:
        for i, name in enumerate(["a.jpg", "a.txt", f"{deep}/b.jpg", "c.txt"]):
            info = tarfile.TarInfo(name)
            data = bytes([i]) * (700 * i + 3)
            info.size, info.mtime = len(data), 1700000000.5  # float mtime -> pax header per member
            archive.addfile(info, io.BytesIO(data))
    fast, truncated = list_tar_members(shard)
    assert not truncated and fast == _scan_with_tarfile(shard)[0]
    assert [name for name, _ in fast] == ["a.jpg", "a.txt", f"{deep}/b.jpg", "c.txt"]
    member = fast[2][1]
    assert shard.read_bytes()[member.offset : member.offset + member.size] == bytes([2]) * 1403


def test_truncated_shard_keeps_complete_samples(tar_root: Path):
    shard = tar_root / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:700])  # cuts into the image member's data
    dataset = open_caption_dataset(tar_root)
    assert len(dataset) == 3 and dataset.skipped["truncated_shard"] == 1


def test_compressed_tar_is_refused_with_its_name(tmp_path: Path):
    write(tmp_path / "shard.tar", gzip.compress(b"not a plain tar" * 100))
    with pytest.raises(UserError, match=r"shard\.tar: not a readable"):
        open_caption_dataset(tmp_path)


# --------------------------------------------------------------------------- img2dataset files


def test_img2dataset_files_layout(tmp_path: Path):
    root = tmp_path / "files"
    write(root / "00001/000010000.jpg", image_bytes("JPEG", "CMYK"))
    write(root / "00001/000010000.txt", "in the second folder")
    write(root / "00000/000000001.png", image_bytes("PNG", "I;16"))
    write(root / "00000/000000001.txt", "sixteen bit")
    write(root / "00000/000000000.jpg", CORRUPT)
    write(root / "00000/000000000.txt", "corrupt")
    write(root / "00000/000000000.json", '{"caption": "json loses to txt"}')
    write(root / "00000/000000002.jpg", image_bytes("JPEG"))
    write(root / "00000/000000002.txt", "")
    write(root / "00000/000000003.txt", "no image")
    write(root / "00000/000000004.webp", image_bytes("WEBP"))
    write(root / "00000/000000004.json", '{"caption": "json caption"}')
    write(root / "00000.parquet", b"PAR1")
    write(root / "00000_stats.json", "{}")
    dataset = open_caption_dataset(root)
    assert dataset.layout == "files"
    assert [dataset.caption(i) for i in range(len(dataset))] == ["corrupt", "sixteen bit", "json caption", "in the second folder"]
    assert dataset.skipped == {"missing_file": 1, "empty_caption": 1}
    assert dataset.load(0)[0] is None
    assert all(dataset.load(i)[0].mode == "RGB" for i in (1, 2, 3))
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.load(3)[1] == "in the second folder"


# --------------------------------------------------------------------------- labelled sets


def test_imagefolder_classes_images_and_corrupt(tmp_path: Path):
    root = tmp_path / "eval"
    write(root / "golden_retriever/1.JPG", image_bytes("JPEG"))
    write(root / "cat/b.bmp", image_bytes("BMP"))
    write(root / "cat/a.png", CORRUPT)
    write(root / "cat/notes.txt", "not an image")
    write(root / "dog/sub/x.webp", image_bytes("WEBP", "RGBA"))
    write(root / ".hidden/y.png", image_bytes())
    dataset = open_labelled_dataset(root)
    assert dataset.layout == "imagefolder"
    assert dataset.classnames == ["cat", "dog", "golden retriever"]
    assert dataset.labels == [0, 0, 1, 2]
    assert dataset.load(0) == (None, 0)
    assert dataset.load(2)[0].mode == "RGB" and dataset.load(3)[1] == 2
    names = write(tmp_path / "names.txt", "kitty\npuppy\n\nretriever\n")
    assert open_labelled_dataset(root, names).classnames == ["kitty", "puppy", "retriever"]
    write(tmp_path / "two.txt", "a\nb\n")
    with pytest.raises(UserError, match=r"two\.txt: 2 class names, but .* has 3 class folders"):
        open_labelled_dataset(root, tmp_path / "two.txt")
    assert "3 classes" in dataset.describe()


def test_imagenet_wnid_folders_map_to_open_clip_classnames(tmp_path: Path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from clipsan.data.imagenet import WNID_FILE

    wnids = (Path(__file__).parents[1] / "clipsan" / "data" / WNID_FILE).read_text().split()
    root = tmp_path / "imagenet"
    png = image_bytes(size=(2, 2))
    for wnid in wnids:
        write(root / wnid / "0.png", png)
    dataset = open_labelled_dataset(root)
    assert dataset.classnames == list(IMAGENET_CLASSNAMES)
    assert dataset.classnames[0] == "tench" and dataset.labels[-1] == 999
    assert "ImageNet-1k wnids: 1000 of 1000 folders" in dataset.describe()


def test_labelled_csv_cleanclip_layout(tmp_path: Path):
    root = tmp_path / "val"
    write(root / "images/0.png", image_bytes())
    write(root / "images/1.png", CORRUPT)
    write(root / "labels.csv", "image,label\nimages/0.png,2\nimages/1.png,0\nimages/gone.png,1\nimages/0.png,\n")
    names = write(tmp_path / "classes.txt", "apple\nbanana\ncherry\n")
    dataset = open_labelled_dataset(root, names)
    assert dataset.layout == "csv" and len(dataset) == 2
    assert dataset.labels == [2, 0] and dataset.classnames == ["apple", "banana", "cherry"]
    assert dataset.skipped == {"missing_file": 1, "empty_label": 1}
    assert dataset.load(0)[0].mode == "RGB" and dataset.load(1) == (None, 0)
    with pytest.raises(UserError, match=r"labels\.csv: labels are class indices; .*--classnames"):
        open_labelled_dataset(root)
    write(tmp_path / "short.txt", "apple\nbanana\n")
    with pytest.raises(UserError, match=r"labels\.csv:2: label 2 is out of range"):
        open_labelled_dataset(root, tmp_path / "short.txt")


def test_labelled_csv_with_class_name_labels(tmp_path: Path):
    write(tmp_path / "a.png", image_bytes())
    manifest = write(tmp_path / "set.csv", "filepath,class\na.png,golden_retriever\na.png,Cat\n")
    dataset = open_labelled_dataset(manifest)
    assert dataset.classnames == ["Cat", "golden retriever"] and dataset.labels == [1, 0]
    names = write(tmp_path / "names.txt", "golden retriever\ncat\ndog\n")
    assert open_labelled_dataset(manifest, names).labels == [0, 1]
    write(tmp_path / "names.txt", "dog\n")
    with pytest.raises(UserError, match=r"set\.csv:2: label 'golden_retriever' is not one of"):
        open_labelled_dataset(manifest, names)
    write(tmp_path / "bad.csv", "image,caption\na.png,x\n")
    with pytest.raises(UserError, match=r"bad\.csv: no label column"):
        open_labelled_dataset(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P-transparent", "RGBA", "CMYK", "1", "I;16", "I", "F"])
def test_to_rgb_handles_every_mode(mode: str):
    if mode == "P-transparent":
        image = decode_image(image_bytes("PNG", mode, size=(3, 3)))
    elif mode == "I;16":  # a real 16-bit image uses the full 0..65535 range
        image = to_rgb(Image.fromarray(np.full((3, 3), 90 * 257, dtype=np.uint16)))
    else:
        image = to_rgb(Image.new("RGB", (3, 3), (90, 90, 90)).convert(mode))
    assert image.mode == "RGB" and image.size == (3, 3)
    if mode in ("I;16", "I", "F"):
        assert image.getpixel((0, 0)) == (90, 90, 90)  # not clipped to white


def test_to_model_pixels_matches_clip_geometry():
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    pixels = to_model_pixels(image, 16)
    reference = T.Compose([T.Resize(16, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(16), T.ToTensor()])
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert torch.allclose(pixels, reference(image), atol=1e-6)
    assert to_model_pixels(Image.new("L", (8, 40), 255), 8).shape == (3, 8, 8)

"""Hostile data (issue #15): every case built from small files written here, checked as a user meets it.

Each part names the item of the issue it covers: (1) batches of unreadable images, (3)
decompression bombs, (4) oversized captions, (5) paths outside the data folder, (7)
truncated shards, (8) empty class folders, (9) ImageNet folders named by wnid.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file

from clipsan.data.captions import open_caption_dataset
from clipsan.data.labelled import open_labelled_dataset
from clipsan.data.transforms import UnreadableImage, decode_image, read_image
from clipsan.errors import UserError
from conftest import run_cli

CORRUPT = random.Random(0).randbytes(300)


def png(size=(6, 4), color=(200, 30, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with (almost) no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BOMB = png_declaring(10000, 10000)  # 100 M pixels in ~100 bytes: above clipsan's limit, below Pillow's error


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def refusal(proc) -> str:
    """The one stderr line of a refused command (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("clipsan ") and not line.startswith("clipsan: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# --------------------------------------------------------------------------- (1) unreadable images in training

PAIRS, CORRUPT_SHARE = 80, 0.3


@pytest.fixture(scope="module")
def faulty_captions(tmp_path_factory) -> tuple[Path, set[int]]:
    """A world caption set where a scattered 30% of images are unreadable (one of them a bomb)."""
    from clipsan.data import world

    root = tmp_path_factory.mktemp("faulty")
    world.write_caption_dataset(root, PAIRS, seed=3)
    bad = set(random.Random(1).sample(range(PAIRS), round(PAIRS * CORRUPT_SHARE)))
    for index in bad:
        (root / "images" / f"{index:07d}.png").write_bytes(BOMB if index == min(bad) else CORRUPT)
    return root, bad


def scheduled_unreadable(bad: set[int], batch_size: int, steps: int, seed: int = 0) -> int:
    """How often an unreadable image's turn comes in the batches the engine trains on (its own sampler)."""
    from clipsan.engine.loader import EpochBatchSampler

    return sum(index in bad for keys in EpochBatchSampler(PAIRS, batch_size, seed, steps) for _, index in keys)


@pytest.mark.parametrize("batch_size,max_steps", [(1, 16), (4, 8), (64, 1)])
def test_training_through_30_percent_unreadable_images(faulty_captions, tiny_model, tmp_path, batch_size, max_steps):
    from clipsan import api

    root, bad = faulty_captions
    outputs = []
    for workers in (0, 2):
        training = api.TrainConfig(epochs=1, batch_size=batch_size, lr=1e-4, warmup_steps=1, max_steps=max_steps, workers=workers, save_every=1000)
        out = tmp_path / f"w{workers}.safetensors"
        config = api.PurifyConfig(
            str(tiny_model),
            api.CaptionData(str(root)),
            training=training,
            evidence=api.EvidenceConfig(holdout=0),  # the engine's schedule over all PAIRS (scheduled_unreadable)
            out=str(out),
            run_dir=str(tmp_path / f"run{workers}"),
            device="cpu",
        )
        report = api.purify(config).to_json()
        assert report["steps"] == max_steps
        assert report["skipped"]["corrupt_image"] == scheduled_unreadable(bad, batch_size, max_steps) > 0
        outputs.append(load_file(str(out)))
    # Substitutes depend on (seed, epoch, index) only: the same weights with and without workers.
    assert all(torch.equal(outputs[0][k], outputs[1][k]) for k in outputs[0])
    assert all(torch.isfinite(t).all() for t in outputs[0].values())


def test_two_processes_refill_their_shards_like_one(faulty_captions, tiny_model, tmp_path):
    import subprocess
    import sys

    from conftest import cli_env

    root, bad = faulty_captions
    args = ["purify", str(tiny_model), "--method", "ft", "--data", str(root), "--batch-size", "16", "--max-steps", "3", "--lr", "1e-4"]
    args += ["--warmup", "1", "--workers", "0", "--device", "cpu", "--holdout", "0", "--format", "json"]
    reports = []
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        out = tmp_path / f"{name}.safetensors"
        cmd = [sys.executable, *launcher, "-m", "clipsan", *args, "--out", str(out), "--run-dir", str(tmp_path / name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report, _ = json.JSONDecoder().raw_decode(proc.stdout)  # under torchrun each process prints the same counts
        reports.append((report, load_file(str(out))))
    (one, one_weights), (two, two_weights) = reports
    assert one["skipped"]["corrupt_image"] == two["skipped"]["corrupt_image"] == scheduled_unreadable(bad, 16, 3) > 0
    worst = max((one_weights[k] - two_weights[k]).abs().max().item() for k in one_weights)
    assert worst < 1e-4  # equal shards, every slot filled the same way on either side


def test_substitutes_are_readable_samples_seen_as_themselves(faulty_captions):
    from clipsan.config.recipes import FineTuneConfig
    from clipsan.engine.loader import RecipeSamples, collate
    from clipsan.models import tokenizer_for
    from clipsan.recipes import build_recipe

    root, bad = faulty_captions
    samples = RecipeSamples(open_caption_dataset(root), build_recipe(FineTuneConfig()), 32, tokenizer_for("clipsan-tiny-rn", 32), seed=0)
    keys = [(0, i) for i in sorted(bad)[:6]] + [(0, i) for i in range(PAIRS) if i not in bad][:2]
    batch = collate([samples[key] for key in keys])
    assert batch["n_corrupt"] == 6 and batch["image"].shape[0] == len(keys)  # full batch
    assert not set(batch["index"].tolist()) & bad  # every slot holds a readable sample, under its own index
    again = collate([samples[key] for key in keys])
    assert torch.equal(again["index"], batch["index"]) and torch.equal(again["image"], batch["image"])
    other_epoch = collate([samples[(1, i)] for _, i in keys[:6]])
    assert not torch.equal(other_epoch["index"], batch["index"][:6])  # drawn anew each epoch


def test_batch_size_one_with_an_unreadable_image_trains_to_the_end(faulty_captions, tiny_model, tmp_path):
    root, bad = faulty_captions
    args = ["purify", tiny_model, "--method", "ft", "--data", root, "--batch-size", "1", "--max-steps", "12", "--device", "cpu", "--holdout", "0"]
    proc = run_cli(*args, "--workers", "0", "--run-dir", tmp_path / "run", "--out", tmp_path / "out.safetensors", "--format", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["steps"] == 12 and report["skipped"]["corrupt_image"] == scheduled_unreadable(bad, 1, 12)


def test_held_out_pairs_whose_image_cannot_be_read_are_left_out_of_retrieval_and_counted(faulty_captions, tiny_model, tmp_path):
    from clipsan.config import EvidenceConfig
    from clipsan.data.holdout import hold_out

    root, _ = faulty_captions
    args = ["purify", tiny_model, "--method", "ft", "--data", root, "--holdout", "20", "--max-steps", "1", "--batch-size", "8", "--device", "cpu"]
    proc = run_cli(*args, "--workers", "0", "--run-dir", tmp_path / "run", "--out", tmp_path / "out.safetensors", "--format", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    held = hold_out(open_caption_dataset(root), EvidenceConfig(holdout=20)).held
    unreadable = sum(held.load(i)[0] is None for i in range(len(held)))
    utility = json.loads(proc.stdout)["utility"]
    assert 0 < unreadable < 20 and (utility["corrupt_image"], utility["pairs"]) == (unreadable, 20 - unreadable)
    assert all(v is not None for when in ("before", "after") for d in ("i2t", "t2i") for v in utility[when][d].values())


def test_a_set_without_one_readable_image_is_refused_before_training(tmp_path, tiny_model):
    root = tmp_path / "broken"
    rows = ["image,caption"]
    for i in range(5):
        write(root / f"{i}.png", BOMB if i == 0 else CORRUPT)
        rows.append(f"{i}.png,picture {i}")
    write(root / "m.csv", "\n".join(rows) + "\n")
    line = refusal(run_cli("purify", tiny_model, "--method", "ft", "--data", root, "--run-dir", tmp_path / "run", "--device", "cpu"))
    assert f"{root}: none of the 5 images can be used" in line and "0.png: 10000x10000" in line
    assert not (tmp_path / "run").exists()  # refused before any run directory or training


# --------------------------------------------------------------------------- (3) decompression bombs


def test_bombs_are_refused_from_the_header_without_decoding_or_warning(monkeypatch):
    def no_decoding(self):
        raise AssertionError("the pixels of an over-limit image must not be decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not surface either
        with pytest.raises(UnreadableImage, match=r"10000x10000 = 100,000,000 pixels, over the limit of 67,108,864"):
            read_image(BOMB)
        assert decode_image(BOMB) is None
        with pytest.raises(UnreadableImage, match="refused by Pillow"):
            read_image(png_declaring(20000, 20000))  # past Pillow's own error threshold
    monkeypatch.undo()
    assert decode_image(png(size=(40, 30)), max_pixels=1200).size == (40, 30)  # at the limit: read
    assert decode_image(png(size=(40, 30)), max_pixels=1199) is None


def test_eval_counts_bombs_as_unreadable_and_keeps_stderr_clean(tmp_path, tiny_model):
    from clipsan.data import world

    root = tmp_path / "eval"
    world.write_eval_set(root, 1, seed=2)
    write(root / "banana" / "bomb.png", BOMB)
    args = ["eval", tiny_model, "--data", root, "--templates", "photo", "--workers", "0", "--device", "cpu"]
    proc = run_cli(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["models"][0]["skipped"]["corrupt_image"] == 1
    assert all(line.startswith("clipsan: ") for line in proc.stderr.splitlines()), proc.stderr  # no library warning
    line = refusal(run_cli(*args, "--max-image-pixels", "100"))  # 32x32 world images are over 100 pixels
    assert "no readable images to evaluate (32 corrupt)" in line
    usage = run_cli(*args, "--max-image-pixels", "0")
    assert usage.returncode == 2 and "--max-image-pixels" in usage.stderr and "Traceback" not in usage.stderr


def test_patch_files_and_scan_probes_are_held_to_the_limit(tmp_path):
    from clipsan.attacks.triggers import parse_trigger
    from clipsan.scan.probes import load_probes

    bomb = write(tmp_path / "patch.png", BOMB)
    with pytest.raises(UserError, match=r"patch\.png: cannot read patch .*10000x10000"):
        parse_trigger(f"patch:{bomb}")
    probes_dir = tmp_path / "probes"
    for i in range(4):
        write(probes_dir / f"{i}.png", png(size=(8 + i, 8)))
        write(probes_dir / f"{i}.txt", f"picture {i}")
    write(probes_dir / "9.png", BOMB)
    write(probes_dir / "9.txt", "a bomb")
    assert load_probes(str(probes_dir), 8, 16, seed=0).skipped == 1
    assert load_probes(str(probes_dir), 8, 16, seed=0, max_image_pixels=80).skipped == 2  # 11x8 and the bomb are over 80 pixels


# --------------------------------------------------------------------------- (4) oversized captions


def test_one_huge_csv_field_or_overlong_caption_does_not_sink_the_manifest(tmp_path):
    write(tmp_path / "a.png", png())
    rows = ["image,caption", "a.png,first", "a.png," + "x" * 17_000_000, "a.png,second", "a.png," + "word " * 14_000, "a.png,third"]
    write(tmp_path / "m.csv", "\n".join(rows) + "\n")
    dataset = open_caption_dataset(tmp_path)
    assert dataset.captions == ["first", "second", "third"]
    assert dataset.skipped["oversized_caption"] == 2 and "2 oversized captions" in dataset.describe()


def test_oversized_caption_sidecars_are_not_read(tmp_path, monkeypatch):
    import clipsan.data.captions as captions

    monkeypatch.setattr(captions, "MAX_CAPTION_FILE_BYTES", 1000)
    shard = tmp_path / "wds" / "0.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as archive:
        for key, caption in (("a", b"fine"), ("b", b"y" * 1001)):
            for name, data in ((f"{key}.png", png()), (f"{key}.txt", caption)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    wds = open_caption_dataset(shard.parent)
    assert wds.captions == ["fine"] and wds.skipped["oversized_caption"] == 1
    files = tmp_path / "files"
    write(files / "0.png", png())
    write(files / "0.txt", "fine")
    write(files / "1.png", png())
    write(files / "1.json", json.dumps({"caption": "z" * 2000}))
    sidecars = open_caption_dataset(files)
    assert sidecars.captions == ["fine"] and sidecars.skipped["oversized_caption"] == 1


@pytest.fixture(scope="module")
def clip_tokenizer():
    from clipsan.models import tokenizer_for

    return tokenizer_for("ViT-B-32", 77)


def fitting_captions(tokenizer) -> list[str]:
    """Captions that fit in 77 tokens while being long in characters: the cut must leave them all alone."""
    decode = tokenizer.byte_decoder
    whole_words = [e[:-4] for e in tokenizer.encoder if e.endswith("</w>") and all(c in decode for c in e[:-4])]
    longest_word = bytes(decode[c] for c in max(whole_words, key=len)).decode("utf-8")  # seven emoji, one token
    words = ["a", "photo", "of", "dog", "on", "the", "beach"]
    texts = [
        " ".join([longest_word] * 75),  # 75 tokens of 28 bytes each
        (" " * 5000).join(words * 10),  # whitespace runs collapse
        "&amp;" * 70 + " dog",  # HTML entities shrink when cleaned
        "&#" + "0" * 3000 + "65; a photo",  # a numeric reference with 3,000 leading zeros is one letter
        "blackandwhitephotography " * 75,  # a longest ASCII entry (24 bytes), 75 times
        "\t\n ".join(["cat"] * 75),
    ]
    assert all(len(tokenizer.encode(t)) <= tokenizer.context_length - 2 for t in texts)  # each really fits
    return texts


def test_fit_caption_never_changes_a_caption_that_fits(clip_tokenizer):
    from clipsan.data.tokens import fit_caption

    for text in fitting_captions(clip_tokenizer):
        assert len(text) > 256
        assert fit_caption(text, clip_tokenizer) == text


def test_fit_caption_cuts_long_captions_to_the_same_kept_tokens(clip_tokenizer):
    from clipsan.data.tokens import fit_caption
    from clipsan.models import tokenizer_for

    rng = random.Random(0)
    words = " ".join(rng.choice(["A", "photo", "of", "dogs,", "running", "on", "the", "beach", "at", "sunset!", "2024"]) for _ in range(3000))
    cut = fit_caption(words, clip_tokenizer)
    assert len(cut) < 1000 < len(words)
    assert torch.equal(clip_tokenizer([cut]), clip_tokenizer([words]))  # every kept token as before
    unbroken = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10_000))
    assert len(fit_caption(unbroken, clip_tokenizer)) <= 75 * 24  # what BPE sees is bounded
    tiny = tokenizer_for("clipsan-tiny-rn", 32)
    assert torch.equal(tiny([fit_caption(words, tiny)]), tiny([words]))  # at the tokenizer's own context length


# --------------------------------------------------------------------------- (5) paths outside the data folder


def test_manifest_rows_outside_the_folder_are_skipped_unless_allowed(tmp_path):
    root = tmp_path / "data"
    write(root / "images" / "in.png", png())
    outside = write(tmp_path / "private" / "secret.png", png(color=(1, 2, 3)))
    os.symlink(outside, root / "images" / "link.png")
    rows = ["image,caption", "images/in.png,inside", "images/../images/in.png,inside again", "/etc/passwd,system file"]
    rows += [f"{outside},absolute", "../private/secret.png,dot-dot", "images/link.png,a link out"]
    write(root / "m.csv", "\n".join(rows) + "\n")
    confined = open_caption_dataset(root)
    assert confined.captions == ["inside", "inside again"] and confined.skipped["outside_root"] == 4
    allowed = open_caption_dataset(root, allow_outside_root=True)
    assert allowed.captions == ["inside", "inside again", "system file", "absolute", "dot-dot", "a link out"]
    write(root / "labels.csv", "image,label\nimages/in.png,cat\n../private/secret.png,dog\n")
    labelled = open_labelled_dataset(root)
    assert labelled.classnames == ["cat"] and labelled.skipped["outside_root"] == 1


def test_purify_says_how_to_read_a_manifest_that_points_elsewhere(tmp_path, tiny_model):
    write(tmp_path / "shared" / "a.png", png())
    write(tmp_path / "data" / "m.csv", "image,caption\n../shared/a.png,a picture\n")
    line = refusal(run_cli("purify", tiny_model, "--method", "ft", "--data", tmp_path / "data", "--device", "cpu", "--run-dir", tmp_path / "run"))
    assert "no usable image-caption pairs" in line and "1 outside root" in line and "--allow-outside-root" in line


def test_imagefolder_follows_links_once_per_real_folder_and_file(tmp_path):
    root = tmp_path / "eval"
    write(root / "cat" / "a.png", png())
    write(root / "cat" / "b.png", png())
    os.symlink(".", root / "cat" / "again")  # a loop: cat/again/again/... is cat
    os.symlink("a.png", root / "cat" / "also-a.png")  # the same file twice
    write(tmp_path / "elsewhere" / "d.png", png())
    os.symlink(tmp_path / "elsewhere", root / "dog")  # a class linked in from outside
    dataset = open_labelled_dataset(root)
    assert [os.path.basename(p) for p in dataset.paths] == ["a.png", "b.png"] and dataset.labels == [0, 0]
    assert dataset.skipped == {"outside_root": 1} and dataset.empty_classes == ["dog"]
    assert open_labelled_dataset(root, allow_outside_root=True).labels == [0, 0, 1]


# --------------------------------------------------------------------------- (7) truncated webdataset shards


def shard_bytes() -> tuple[bytes, list[int]]:
    """An intact shard of three samples, and the offset where each member's data ends."""
    buffer = io.BytesIO()
    ends = []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for key in ("a", "b", "c"):
            for name, data in ((f"{key}.png", png()), (f"{key}.txt", f"caption {key}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                ends.append(archive.offset - (-len(data) % 512))  # archive.offset: after the padding
    return buffer.getvalue(), ends


@pytest.mark.parametrize("cut", ["intact", "inside padding", "at a member boundary", "inside data"])
@pytest.mark.parametrize("scanner", ["fast", "tarfile"])
def test_truncated_shards_are_counted_and_keep_what_came_before(tmp_path, cut, scanner, monkeypatch):
    import clipsan.data.tars as tars

    def unusual(handle, size):
        raise tars._UnusualHeader

    if scanner == "tarfile":  # the fallback for headers the fast scanner leaves alone
        monkeypatch.setattr(tars, "_scan_tar_headers", unusual)
    data, ends = shard_bytes()
    last_data_end = ends[-1]  # c.txt's data ends here, its padding follows
    cuts = {"intact": len(data), "inside padding": last_data_end + 10, "at a member boundary": -(-last_data_end // 512) * 512, "inside data": last_data_end - 3}
    write(tmp_path / "0.tar", data[: cuts[cut]])
    dataset = open_caption_dataset(tmp_path)
    if cut == "intact":
        assert dataset.captions == ["caption a", "caption b", "caption c"] and "truncated_shard" not in dataset.skipped
    else:
        kept = ["caption a", "caption b", "caption c"] if cut != "inside data" else ["caption a", "caption b"]
        assert dataset.captions == kept and dataset.skipped["truncated_shard"] == 1
        assert "1 truncated shard" in dataset.describe()


# --------------------------------------------------------------------------- (8) empty class folders


def test_an_empty_class_folder_stays_a_class_and_is_named_in_the_notes(tmp_path):
    root = tmp_path / "eval"
    write(root / "cat" / "a.png", png())
    (root / "dog").mkdir()
    write(root / "emu" / "notes.txt", "no images here")
    dataset = open_labelled_dataset(root)
    assert dataset.classnames == ["cat", "dog", "emu"] and dataset.empty_classes == ["dog", "emu"]
    assert "2 class folders without images, kept as classes (dog, emu)" in dataset.describe()


# --------------------------------------------------------------------------- (9) ImageNet wnids


def test_the_shipped_wnid_table_is_imagenet_1k_in_sorted_order():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from clipsan.data.imagenet import imagenet_names_by_wnid

    table = imagenet_names_by_wnid()
    wnids = list(table)
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)
    assert all(w[0] == "n" and len(w) == 9 and w[1:].isdigit() for w in wnids)
    assert list(table.values()) == list(IMAGENET_CLASSNAMES)
    # Well-known synsets (ILSVRC-2012's LOC_synset_mapping.txt) land on their CLIP names.
    assert table["n01440764"] == "tench" and table["n02085620"] == "Chihuahua" and table["n02085782"] == "Japanese Chin"
    assert table["n04589890"] == "window screen" and table["n15075141"] == "toilet paper"


def test_a_wnid_subset_is_named_by_each_folders_own_wnid(tmp_path):
    from clipsan.data.imagenet import imagenet_names_by_wnid

    imagenette = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042", "n03425413", "n03445777", "n03888605"]
    for wnid in imagenette:
        write(tmp_path / "val" / wnid / "0.png", png())
    dataset = open_labelled_dataset(tmp_path / "val")
    assert dataset.classnames == [imagenet_names_by_wnid()[w] for w in imagenette]
    assert dataset.classnames[:2] == ["tench", "English Springer Spaniel"]
    assert "ImageNet-1k wnids: 10 of 10 folders" in dataset.describe()


def test_a_folder_named_like_a_wnid_outside_imagenet_1k_is_refused(tmp_path, tiny_model):
    for wnid in ("n01440764", "n02085620", "n02085782"):
        write(tmp_path / "val" / wnid / "0.png", png())
    write(tmp_path / "val" / "n00000001" / "0.png", png())  # an ImageNet-21k synset, not one of the 1k
    with pytest.raises(UserError, match=r"val/n00000001: folder named like a WordNet id but not one of the 1000 ImageNet-1k classes"):
        open_labelled_dataset(tmp_path / "val")
    line = refusal(run_cli("eval", tiny_model, "--data", tmp_path / "val", "--device", "cpu"))
    assert "n00000001" in line and "--classnames" in line

"""One fuzz target per reader of untrusted bytes: the bytes become the file a user would hand
clipsan, and the reader must either accept them or refuse them with a UserError (one line,
exit 2). Anything else escaping (a traceback), a crash or a hang is a bug.

Each target writes its input into a private scratch folder (on /dev/shm where there is one)
and calls the same function the commands call on that file.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from clipsan.checkpoints import hf, open_clip_dir, tokenizer_files
from clipsan.checkpoints.read import read_checkpoint
from clipsan.checkpoints.resolve import preprocess_from_metadata, resolve_arch
from clipsan.data.captions import open_caption_dataset
from clipsan.data.labelled import open_labelled_dataset
from clipsan.data.transforms import UnreadableImage, read_image
from clipsan.errors import UserError
from clipsan.scan.calibration_file import read_calibration
from clipsan.scan.prior import read_scan_report

# Small enough that a pixel bomb is refused from its header, large enough for the seeds.
MAX_PIXELS = 4096 * 4096
# The tiny images every data target's files may name (a.png and b.png, 4x4).
IMAGES = ("a.png", "b.png")


def _scratch_root() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="clipsan-fuzz-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))


_ROOT: Path | None = None


def scratch(name: str) -> Path:
    """A fresh folder for one input (emptied each time), under this process's scratch root."""
    global _ROOT
    if _ROOT is None:
        _ROOT = _scratch_root()
    folder = _ROOT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def cleanup() -> None:
    if _ROOT is not None:
        shutil.rmtree(_ROOT, ignore_errors=True)


def tiny_png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _with_images(folder: Path) -> Path:
    for name, colour in zip(IMAGES, ((200, 30, 30), (30, 30, 200))):
        (folder / name).write_bytes(tiny_png(colour))
    return folder


# --------------------------------------------------------------------------- checkpoints


def _read_model(spec: str) -> None:
    """What load_model does before building a model: the layout's reader, then the architecture
    and normalisation its config, metadata or shapes state."""
    checkpoint = read_checkpoint(spec)
    resolve_arch(checkpoint, None)
    preprocess_from_metadata(checkpoint.path, checkpoint.metadata)


def safetensors_file(data: bytes) -> None:
    """A .safetensors MODEL: header length, JSON header, tensor data, metadata."""
    path = scratch("safetensors") / "model.safetensors"
    path.write_bytes(data)
    _read_model(str(path))


def torch_file(data: bytes) -> None:
    """A .pt MODEL: PyTorch's zip or legacy pickle, through the weights_only gate."""
    path = scratch("torch") / "model.pt"
    path.write_bytes(data)
    _read_model(str(path))


def _weights_folder(name: str, weights_name: str, weights: bytes) -> Path:
    folder = scratch(name)
    (folder / weights_name).write_bytes(weights)
    return folder


def hf_config(data: bytes) -> None:
    """A transformers CLIP folder's config.json (beside a small weights file)."""
    folder = _weights_folder("hf", "model.safetensors", _fixed_weights())
    (folder / hf.CONFIG).write_bytes(data)
    _read_model(str(folder))


def open_clip_config(data: bytes) -> None:
    """An open_clip hub folder's open_clip_config.json (beside a small weights file)."""
    folder = _weights_folder("open_clip", open_clip_dir.WEIGHTS_OUT, _fixed_weights())
    (folder / open_clip_dir.CONFIG).write_bytes(data)
    _read_model(str(folder))


# The first byte of a tokenizer input names the file the rest becomes.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")


def tokenizer_file(data: bytes) -> None:
    """A model folder's tokenizer files (vocab.json, merges.txt, tokenizer.json)."""
    if not data:
        return
    folder = scratch("tokenizer")
    (folder / TOKENIZER_FILES[data[0] % len(TOKENIZER_FILES)]).write_bytes(data[1:])
    tokenizer_files.check_folder(folder)


# The first byte of a SigLIP tokenizer input names the file the rest becomes; a tokenizer_config.json
# is fuzzed beside a valid tokenizer.json (the fixed one below).
SIGLIP_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
SAMPLE_CAPTIONS = ["a red circle above a blue square", "a tiny green triangle on gray", "Ünïcode naïve café, 東京!", ""]


def siglip_tokenizer(data: bytes) -> None:
    """A SigLIP checkpoint's own tokenizer (tokenizer.json or spiece.model, its tokenizer_config.json), read and run."""
    if not data:
        return
    folder = scratch("siglip_tokenizer")
    name = SIGLIP_TOKENIZER_FILES[data[0] % len(SIGLIP_TOKENIZER_FILES)]
    if name == "tokenizer_config.json":
        (folder / "tokenizer.json").write_bytes(fixed_tokenizer_json())
    (folder / name).write_bytes(data[1:])
    tokenizer = tokenizer_files.siglip_tokenizer(folder, 16)
    tokenizer(SAMPLE_CAPTIONS)


def tokenizer_record(data: bytes) -> None:
    """The tokenizer record in a SigLIP safetensors file's metadata, beside the file it names (its hash made to match)."""
    import hashlib
    import json

    folder = scratch("tokenizer_record")
    (folder / "m.tokenizer.json").write_bytes(fixed_tokenizer_json())
    text = data.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError, RecursionError):
        record = json.loads(text)
        if isinstance(record, dict):  # past the hash check: the rest of the record is what is fuzzed
            record.update(file="m.tokenizer.json", sha256=hashlib.sha256(fixed_tokenizer_json()).hexdigest())
            text = json.dumps(record)
    tokenizer = tokenizer_files.tokenizer_beside(folder / "m.safetensors", {tokenizer_files.META_TOKENIZER: text}, 16, None)
    tokenizer_files.fit_to_model(tokenizer, 64)(SAMPLE_CAPTIONS)


_FIXED_TOKENIZER_JSON: bytes | None = None


def fixed_tokenizer_json() -> bytes:
    """A small Unigram tokenizer.json laid out as SigLIP 2's (<pad> 0, </s> 1, <unk> 2, '</s>' appended)."""
    global _FIXED_TOKENIZER_JSON
    if _FIXED_TOKENIZER_JSON is None:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

        words = sorted({w for caption in SAMPLE_CAPTIONS for w in caption.lower().split()})
        letters = sorted({c for caption in SAMPLE_CAPTIONS for c in caption.lower() if not c.isspace()})
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
        pieces += [(f"\u2581{w}", -1.0) for w in words] + [(c, -3.0) for c in letters]
        tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))  # a fixed vocabulary: the same file in every process
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        _FIXED_TOKENIZER_JSON = tokenizer.to_str().encode()
    return _FIXED_TOKENIZER_JSON


_FIXED_WEIGHTS: bytes | None = None


def _fixed_weights() -> bytes:
    """A small valid safetensors file (not a CLIP model): the config is what these targets fuzz."""
    global _FIXED_WEIGHTS
    if _FIXED_WEIGHTS is None:
        import torch
        from safetensors.torch import save

        _FIXED_WEIGHTS = save({"logit_scale": torch.zeros(())}, metadata={"format": "pt"})
    return _FIXED_WEIGHTS


# --------------------------------------------------------------------------- scan


def calibration_file(data: bytes) -> None:
    """A calibration file handed to scan --calibration, read and asked for a threshold as scan asks."""
    path = scratch("calibration") / "calibration.json"
    path.write_bytes(data)
    calibration = read_calibration(path)
    for entry in calibration.entries:
        for signal in entry.signals:
            calibration.threshold_for(signal, entry.family, entry.arch, entry.image_size)


# --------------------------------------------------------------------------- data


def _read_all_captions(root: Path) -> None:
    dataset = open_caption_dataset(root, max_image_pixels=MAX_PIXELS)
    for index in range(len(dataset)):
        dataset.load(index)


def caption_manifest(data: bytes) -> None:
    """A caption dataset's CSV/TSV manifest (first byte: which suffix), naming a.png and b.png."""
    if not data:
        return
    folder = _with_images(scratch("manifest"))
    (folder / ("data.tsv" if data[0] & 1 else "data.csv")).write_bytes(data[1:])
    _read_all_captions(folder)


def webdataset_tar(data: bytes) -> None:
    """A webdataset shard: tar headers (ustar, GNU long names, pax), members, their images and captions."""
    folder = scratch("tar")
    (folder / "00000.tar").write_bytes(data)
    _read_all_captions(folder)


def labelled_manifest(data: bytes) -> None:
    """An evaluation set's labels.csv (image,label) naming a.png and b.png, with a class-names file."""
    folder = _with_images(scratch("labelled"))
    (folder / "labels.csv").write_bytes(data)
    (folder / "classnames.txt").write_text("banana\ncircle\nsquare\n")
    dataset = open_labelled_dataset(folder, folder / "classnames.txt", max_image_pixels=MAX_PIXELS)
    for index in range(len(dataset)):
        dataset.load(index)


def image_header(data: bytes) -> None:
    """Any image file a dataset names: its header read (and the pixel limit checked) before decoding."""
    with contextlib.suppress(UnreadableImage):  # the datasets skip and count it
        read_image(data, MAX_PIXELS)


# --------------------------------------------------------------------------- reports read back


def scan_report(data: bytes) -> None:
    """``purify --scan-report FILE``: a scan report, read whole (bounded), parsed strictly, each model's fields checked."""
    path = scratch("scan-report") / "scan.json"
    path.write_bytes(data)
    read_scan_report(path)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "safetensors": safetensors_file,
    "torch": torch_file,
    "hf_config": hf_config,
    "open_clip_config": open_clip_config,
    "tokenizer": tokenizer_file,
    "siglip_tokenizer": siglip_tokenizer,
    "tokenizer_record": tokenizer_record,
    "manifest": caption_manifest,
    "tar": webdataset_tar,
    "labelled": labelled_manifest,
    "image": image_header,
    "scan_report": scan_report,
    "calibration": calibration_file,
}

# What the readers may raise: the one-line refusal every command turns into exit 2.
EXPECTED = (UserError,)


def run_one(target: Callable[[bytes], None], data: bytes) -> None:
    """One input through a target; a UserError is the reader doing its job."""
    try:
        target(data)
    except EXPECTED as err:
        message = str(err)
        if "\n" in message or not message:
            raise AssertionError(f"a refusal must be one non-empty line, got {message!r}") from None

"""``python -m fuzz.seeds``: (re)write the committed seed corpus, fuzz/corpus/TARGET/*.

Small, valid (and a few deliberately refused) files of each kind, so the fuzzer starts from
inputs that reach deep into each reader: a tiny CLIP with clipsan's metadata, transformers and
open_clip configs, CSV/TSV manifests, webdataset shards in each tar flavour, images of each format.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save

from fuzz.targets import SAMPLE_CAPTIONS, SIGLIP_TOKENIZER_FILES, TOKENIZER_FILES, fixed_tokenizer_json, tiny_png

CORPUS = Path(__file__).resolve().parent / "corpus"

# A CLIP small enough for a seed (a few KB): ViT with one 8-wide layer per tower, 16 tokens.
TINY_CFG = {
    "embed_dim": 8,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 8, "layers": 1, "head_width": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 16, "width": 8, "heads": 1, "layers": 1},
}
PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def _tiny_state() -> dict[str, torch.Tensor]:
    from clipsan.models.registry import register_model_config
    from clipsan.openclip import open_clip

    torch.manual_seed(0)
    arch = register_model_config("fuzz-tiny", TINY_CFG)
    model = open_clip.create_model(arch, pretrained=None)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _metadata(arch: str = "fuzz-tiny") -> dict[str, str]:
    return {
        "format": "pt",
        "clipsan.arch": arch,
        "clipsan.model_cfg": json.dumps(TINY_CFG, sort_keys=True),
        "clipsan.preprocess_cfg": json.dumps(PREPROCESS, sort_keys=True),
        "clipsan.activation": "gelu",
    }


def _write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def _torch_bytes(obj, zip_format: bool = True) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()


def checkpoint_seeds(state: dict[str, torch.Tensor]) -> None:
    small = {k: state[k] for k in ("logit_scale", "positional_embedding", "text_projection", "visual.proj")}
    _write("safetensors", "tiny-with-metadata.safetensors", save(state, metadata=_metadata()))
    _write("safetensors", "tiny-no-metadata.safetensors", save(state))
    _write("safetensors", "tiny-fp16.safetensors", save({k: v.half() for k, v in state.items()}, metadata=_metadata()))
    _write("safetensors", "few-tensors.safetensors", save(small, metadata={"clipsan.arch": "ViT-B-32"}))
    nan = dict(small, logit_scale=torch.tensor(float("nan")))
    _write("safetensors", "nan-weight.safetensors", save(nan, metadata=_metadata()))
    _write("safetensors", "bad-model-cfg.safetensors", save(small, metadata={"clipsan.arch": "x", "clipsan.model_cfg": "[1, 2]"}))

    _write("torch", "tiny-zip.pt", _torch_bytes(state))
    _write("torch", "few-legacy.pt", _torch_bytes(small, zip_format=False))
    cleanclip = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in small.items()}}
    _write("torch", "cleanclip-style.pt", _torch_bytes(cleanclip))
    _write("torch", "list-not-dict.pt", _torch_bytes([small["logit_scale"]]))
    # A pickle that names a callable (harmless here): the weights_only gate must refuse it, never call it.
    _write("torch", "global-call.pkl", pickle.dumps(_NeedsGlobal(), protocol=2))


class _NeedsGlobal:
    def __reduce__(self):
        return (len, ("refused",))


def config_seeds() -> None:
    from transformers import CLIPConfig

    base = CLIPConfig().to_dict()
    tower = {"hidden_size": 8, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1}
    text = {**tower, "vocab_size": 16, "max_position_embeddings": 8}
    tiny = CLIPConfig(text_config=text, vision_config={**tower, "image_size": 16, "patch_size": 8}, projection_dim=8).to_dict()
    for name, config in (("clip-vit-b32.json", base), ("tiny.json", tiny), ("siglip.json", {"model_type": "siglip", "text_config": {}, "vision_config": {}})):
        _write("hf_config", name, json.dumps(config, indent=2).encode())
    _write("hf_config", "gelu.json", json.dumps({**tiny, "text_config": {**tiny["text_config"], "hidden_act": "gelu"}}).encode())

    from clipsan.models.registry import model_config

    rn = model_config("clipsan-tiny-rn")
    _write("open_clip_config", "tiny-vit.json", json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": PREPROCESS}).encode())
    _write("open_clip_config", "tiny-rn.json", json.dumps({"model_cfg": rn, "preprocess_cfg": PREPROCESS}, indent=1).encode())
    _write("open_clip_config", "quickgelu.json", json.dumps({"model_cfg": {**TINY_CFG, "quick_gelu": True}}).encode())


def tokenizer_seeds() -> None:
    kind = {name: bytes([index]) for index, name in enumerate(TOKENIZER_FILES)}
    _write("tokenizer", "vocab.json", kind["vocab.json"] + json.dumps({"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}).encode())
    _write("tokenizer", "merges.txt", kind["merges.txt"] + b"#version: 0.2\ni n\nt h\nin g</w>\n")
    fast = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b", ["b", "a"]]}}
    _write("tokenizer", "tokenizer.json", kind["tokenizer.json"] + json.dumps(fast).encode())


def siglip_tokenizer_seeds() -> None:
    kind = {name: bytes([index]) for index, name in enumerate(SIGLIP_TOKENIZER_FILES)}
    _write("siglip_tokenizer", "tokenizer.json", kind["tokenizer.json"] + fixed_tokenizer_json())
    _write("siglip_tokenizer", "spiece.model", kind["spiece.model"] + _spiece_model())
    for name, config in (
        ("siglip", {"tokenizer_class": "SiglipTokenizer", "do_lower_case": True}),
        ("siglip2", {"tokenizer_class": "Siglip2TokenizerFast", "padding_side": "right", "pad_token": {"content": "<pad>"}}),
        ("fast", {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>"}),
    ):
        _write("siglip_tokenizer", f"config-{name}.json", kind["tokenizer_config.json"] + json.dumps(config).encode())

    record = {"file_name": "tokenizer.json", "context_length": 16, "style": "siglip2", "pad_id": 0, "eos_id": None, "pad_left": True}
    record.update(lower=True, open_clip_clean="whitespace", file="m.tokenizer.json", sha256="")
    _write("tokenizer_record", "siglip2.json", json.dumps(record).encode())
    _write("tokenizer_record", "json.json", json.dumps({**record, "style": "json", "pad_left": False, "open_clip_clean": None}).encode())


def _spiece_model() -> bytes:
    """A tiny SentencePiece unigram model with SigLIP's ids (<pad> 0, </s> 1, <unk> 2)."""
    import sentencepiece

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SAMPLE_CAPTIONS * 4), model_writer=buffer, vocab_size=40, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
        normalization_rule_name="identity",  # no 240-KB NFKC table in a seed
    )  # fmt: skip
    return buffer.getvalue()


def data_seeds() -> None:
    csv = b'image,caption\na.png,a red square on gray\nb.png,"a blue circle, above"\n'
    _write("manifest", "csv", b"\x00" + csv)
    _write("manifest", "tsv", b"\x01" + b"filepath\ttitle\na.png\ta red square\nb.png\ta blue circle\n")
    _write("manifest", "missing-and-outside", b"\x00" + b"file,text\nnone.png,x\n../a.png,y\n/etc/passwd,z\na.png,ok\n")
    _write("labelled", "names", b"image,label\na.png,banana\nb.png,circle\n")
    _write("labelled", "indices", b"image,label\na.png,0\nb.png,2\n")

    for flavour, fmt in (("ustar", tarfile.USTAR_FORMAT), ("gnu", tarfile.GNU_FORMAT), ("pax", tarfile.PAX_FORMAT)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            stem = "k" * 120 if flavour != "ustar" else "000001"  # long names need GNU or pax headers
            for key, (payload, text) in enumerate(((tiny_png((200, 30, 30)), b"a red square"), (tiny_png((30, 30, 200)), b"a blue circle"))):
                for suffix, data in ((".png", payload), (".txt", text)):
                    info = tarfile.TarInfo(f"{stem}{key}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        _write("tar", f"{flavour}.tar", buffer.getvalue())


def image_seeds() -> None:
    rgb = Image.new("RGB", (5, 3), (10, 200, 30))
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff"), ("PPM", "ppm")):
        buffer = io.BytesIO()
        rgb.save(buffer, format=fmt)
        _write("image", f"rgb.{suffix}", buffer.getvalue())
    for mode, name in (("I;16", "16bit.png"), ("P", "palette.png"), ("LA", "gray-alpha.png"), ("1", "bilevel.png")):
        buffer = io.BytesIO()
        Image.new(mode, (3, 3)).save(buffer, format="PNG")
        _write("image", name, buffer.getvalue())
    # A PNG header that claims 100000 x 100000 pixels: refused before decoding.
    png = bytearray(tiny_png((0, 0, 0)))
    png[16:24] = (100000).to_bytes(4, "big") * 2
    _write("image", "bomb-header.png", bytes(png))


def scan_report_seeds() -> None:
    """A one-model scan report as `clipsan scan --format json` writes it (a batch of one, its row's keys on top too)."""
    signal = {"threshold_source": "lab-32px", "fires_when": "below", "counted": True, "inversion_succeeded": True, "steps": 60}
    row = {
        "model": "victim.safetensors", "sha256": "ab" * 32, "arch": "clipsan-tiny-rn", "image_size": 32, "reference": None,
        "verdict": "backdoor", "backdoor": True, "fired_signals": ["decree"],
        "signals": [
            {"name": "decree", "statistic": 0.0195, "threshold": 0.066, "fired": True, **signal},
            {"name": "universal-perturbation", "statistic": 0.062, "threshold": 0.045, "fired": False, **signal},
            {"name": "target-alignment", "statistic": 0.74, "threshold": 1.15, "fired": False, **signal, "fires_when": "above", "counted": False},
        ],
        "probes": {"source": "captions", "synthetic": False, "data": "data/", "count": 32, "skipped": 0, "description": "32 images from data/"},
        "budget": "quick", "steps": 60, "seed": 0, "device": "cpu", "precision": "fp32", "seconds": 4.2,
    }  # fmt: skip
    batch = {"schema_version": 2, "tool": {"name": "clipsan", "version": "0.1.0"}, "models": [row], "errors": []}
    _write("scan_report", "one-model.json", json.dumps({**row, **batch}, indent=2, sort_keys=True).encode())
    _write("scan_report", "two-models.json", json.dumps({**batch, "models": [row, {**row, "sha256": "cd" * 32}]}).encode())
    _write("scan_report", "schema-1.json", json.dumps({**row, "schema_version": 1}).encode())


def calibration_seeds() -> None:
    """A calibration file as clipsan calibrate writes it (two entries, a signal with no collapse), and two it refuses."""
    from clipsan.scan.calibration_file import Calibration, Entry, SignalCalibration

    models = ({"model": "a.safetensors", "sha256": "0" * 64, "family": "clip", "arch": "ViT-B-32", "image_size": 224},)
    entries = (
        Entry("clip", "ViT-B-32", 224, {"decree": SignalCalibration.derive([0.11, 0.125], 0), "universal-perturbation": SignalCalibration.derive([], 2)}),
        Entry("siglip", "ViT-B-16-SigLIP", 224, {"reference-divergence": SignalCalibration.derive([0.3], 1)}),
    )
    probes = {"source": "world", "data": None}
    calibration = Calibration(entries, {"probes": 128, "steps": 300, "batch_size": 32}, (0, 1), probes, models, tool={"name": "clipsan", "version": "0"})
    document = calibration.to_json()
    _write("calibration", "valid.json", json.dumps(document, indent=2).encode())
    _write("calibration", "newer-version.json", json.dumps({**document, "version": 2}).encode())
    _write("calibration", "foreign.json", json.dumps({"schema_version": 3, "models": [], "verdict": "clean"}).encode())


def main() -> None:
    shutil.rmtree(CORPUS, ignore_errors=True)
    checkpoint_seeds(_tiny_state())
    config_seeds()
    tokenizer_seeds()
    siglip_tokenizer_seeds()
    data_seeds()
    image_seeds()
    scan_report_seeds()
    calibration_seeds()
    for folder in sorted(CORPUS.iterdir()):
        files = list(folder.iterdir())
        print(f"{folder.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()

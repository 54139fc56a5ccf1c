"""SigLIP and SigLIP 2 checkpoints, against the libraries that define them (transformers, open_clip).

Every model is random-init and every tokenizer trained here on a few sentences (no download).
The bar is the CLIP layouts' (tests/test_layouts.py): clipsan's image and text embeddings of a
checkpoint equal its own library's within 1e-5 (fp32), its token ids equal the folder's own
tokenizer's, and what clipsan writes back loads in that library with equal embeddings.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import clipsan.cli
from clipsan.checkpoints import load_model
from clipsan.checkpoints.output import OutputPlan, write_output
from clipsan.errors import UserError
from clipsan.openclip import open_clip
from conftest import SIGLIP_ARCH, spiece_model, tokenizer_corpus

transformers = pytest.importorskip("transformers")

TOL = 1e-5
CONTEXT = 16
CAPTIONS = ["a photo of a cat.", "A small RED circle, above: a blue square!", "Ünïcode naïve café — 東京", "word " * 40]
# Head width 64 (as every SigLIP but So400m): the one a weights file without config.json is assumed to have.
TOWERS = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2}
SIGLIP = {"text_config": {**TOWERS, "vocab_size": 64, "max_position_embeddings": CONTEXT}, "vision_config": {**TOWERS, "image_size": 32, "patch_size": 8}}
SIGLIP2 = {"text_config": {**TOWERS, "vocab_size": 128, "max_position_embeddings": CONTEXT}, "vision_config": {**TOWERS, "num_patches": 16, "patch_size": 8}}


def siglip_folder(folder: Path, half: bool = False, **save) -> Path:
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(**SIGLIP))
    (model.half() if half else model).save_pretrained(folder, **save)
    spiece_model(folder, tokenizer_corpus(40))
    transformers.SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=CONTEXT).save_pretrained(folder)
    return folder


def siglip2_folder(folder: Path) -> Path:
    """A Siglip2Model whose tokenizer.json is a byte-fallback BPE, saved by transformers' own Siglip2Tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    torch.manual_seed(1)
    transformers.Siglip2Model(transformers.Siglip2Config(**SIGLIP2)).save_pretrained(folder)
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.train_from_iterator(tokenizer_corpus(40), trainers.BpeTrainer(vocab_size=128, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]))
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    transformers.Siglip2Tokenizer(vocab=spec["vocab"], merges=merges, model_max_length=CONTEXT).save_pretrained(folder)
    return folder


def pixels(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def pooled(output) -> torch.Tensor:
    return getattr(output, "pooler_output", output)


@torch.no_grad()
def transformers_embeddings(model, images01: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    x = (images01 - 0.5) / 0.5  # SigLIP's normalisation
    if isinstance(model, transformers.Siglip2Model):  # a Linear over patches flattened as (row, column, channel)
        n, _, size, _ = x.shape
        patch = model.config.vision_config.patch_size
        side = size // patch
        patches = x.reshape(n, 3, side, patch, side, patch).permute(0, 2, 4, 3, 5, 1).reshape(n, side * side, -1)
        mask, shapes = torch.ones(n, side * side, dtype=torch.long), torch.tensor([[side, side]] * n)
        image = pooled(model.get_image_features(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes))
    else:
        image = pooled(model.get_image_features(pixel_values=x))
    return image, pooled(model.get_text_features(input_ids=tokens))


@torch.no_grad()
def clipsan_embeddings(model, images01: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    return model.encode_image(images01, normalize=False), model.encode_text(tokens, normalize=False)


def max_difference(reference, clipsan_model) -> float:
    images, tokens = pixels(size=clipsan_model.image_size), clipsan_model.tokenize(CAPTIONS)
    theirs = transformers_embeddings(reference, images, tokens)
    ours = clipsan_embeddings(clipsan_model, images, tokens)
    assert all(a.shape == b.shape for a, b in zip(ours, theirs))
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs))


def their_tokens(folder: Path) -> torch.Tensor:
    return transformers.AutoTokenizer.from_pretrained(folder)(
        CAPTIONS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt"
    ).input_ids


# --------------------------------------------------------------------------- transformers -> clipsan


def test_siglip_folder_shards_bin_fp16_and_lone_file_equal_transformers(tmp_path):
    folder = siglip_folder(tmp_path / "siglip")
    reference = transformers.SiglipModel.from_pretrained(folder)
    sharded = siglip_folder(tmp_path / "sharded", max_shard_size="100KB")
    assert len(set(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    old_style = tmp_path / "bin"  # a pre-safetensors folder, with the position_ids buffers old versions saved
    shutil.copytree(folder, old_style, ignore=shutil.ignore_patterns("model.safetensors"))
    torch.save({**reference.state_dict(), "text_model.embeddings.position_ids": torch.arange(CONTEXT)[None]}, old_style / "pytorch_model.bin")
    for spec, layout in ((folder, "transformers"), (sharded, "transformers"), (old_style, "transformers"), (folder / "model.safetensors", "transformers-file")):
        loaded = load_model(str(spec))
        assert (loaded.layout, loaded.model.family) == (layout, "siglip")
        assert torch.equal(loaded.model.tokenize(CAPTIONS), their_tokens(folder))  # the folder's own SiglipTokenizer's ids
        assert torch.equal(loaded.model.logit_bias.detach().reshape(1), reference.logit_bias.detach())
        assert max_difference(reference, loaded.model) < TOL
    alone = load_model(str(folder / "model.safetensors"))  # no config.json: sizes from the shapes, the rest stated
    assert alone.arch_source == "shapes" and any("num_attention_heads 2 (image) and 2 (text)" in w for w in alone.warnings)
    half = siglip_folder(tmp_path / "fp16", half=True)
    loaded = load_model(str(half))
    assert any("float16 weights upcast to float32" in note for note in loaded.notes)
    assert max_difference(transformers.SiglipModel.from_pretrained(half).float(), loaded.model) < TOL


def test_siglip2_folder_equals_transformers_and_writes_back(tmp_path):
    folder = siglip2_folder(tmp_path / "siglip2")
    reference = transformers.Siglip2Model.from_pretrained(folder)
    loaded = load_model(str(folder))
    assert loaded.model.file_tokenizer.pad_left  # Siglip2Tokenizer pads on the left
    assert torch.equal(loaded.model.tokenize(CAPTIONS), their_tokens(folder))
    assert max_difference(reference, loaded.model) < TOL
    out = write_output(OutputPlan("hf", tmp_path / "out"), loaded.model, loaded.source, {})
    assert json.loads((out / "config.json").read_text())["model_type"] == "siglip2"
    assert max_difference(transformers.Siglip2Model.from_pretrained(out), loaded.model) < TOL
    assert torch.equal(their_tokens(out), loaded.model.tokenize(CAPTIONS))


# --------------------------------------------------------------------------- clipsan -> every layout


def test_siglip_written_back_in_every_layout_loads_in_its_library(tmp_path):
    loaded = load_model(str(siglip_folder(tmp_path / "siglip")))
    model = loaded.model.eval()
    images, tokens = pixels(), model.tokenize(CAPTIONS)
    expected = clipsan_embeddings(model, images, tokens)
    hf = write_output(OutputPlan("hf", tmp_path / "hf"), model, loaded.source, {})
    assert max_difference(transformers.SiglipModel.from_pretrained(hf), model) < TOL
    assert torch.equal(their_tokens(hf), tokens)
    oc = write_output(OutputPlan("open_clip", tmp_path / "oc"), model, loaded.source, {})
    theirs, _, _ = open_clip.create_model_and_transforms(model.arch, pretrained=str(oc / "open_clip_model.safetensors"))
    with torch.no_grad():
        theirs.eval()
        assert (theirs.encode_image((images - 0.5) / 0.5) - expected[0]).abs().max() < TOL
        assert (theirs.encode_text(tokens) - expected[1]).abs().max() < TOL
    single = write_output(OutputPlan("safetensors", tmp_path / "single" / "m.safetensors"), model, loaded.source, {})
    assert (single.parent / "m.spiece.model").is_file()  # the tokenizer goes beside the file, named after it
    for written in (hf, oc, single):
        again = load_model(str(written)).model
        assert torch.equal(again.tokenize(CAPTIONS), tokens), written
        for a, b in zip(clipsan_embeddings(again, images, tokens), expected):
            assert torch.equal(a, b), written
        assert torch.equal(again.logit_bias, model.logit_bias)


def test_open_clip_siglip_folder_equals_open_clip_and_its_weights_are_inferred(siglip_model, tmp_path):
    loaded = load_model(str(siglip_model))
    model = loaded.model.eval()
    assert (loaded.layout, loaded.arch, model.family) == ("open_clip", SIGLIP_ARCH, "siglip")
    theirs, _, _ = open_clip.create_model_and_transforms(SIGLIP_ARCH, pretrained=str(siglip_model / "open_clip_model.safetensors"))
    images, tokens = pixels(), model.tokenize(CAPTIONS)
    assert tokens.shape == (len(CAPTIONS), model.context_length)
    with torch.no_grad():
        theirs.eval()
        assert torch.equal(theirs.encode_image((images - 0.5) / 0.5), model.encode_image(images, normalize=False))
        assert torch.equal(theirs.encode_text(tokens), model.encode_text(tokens, normalize=False))
    # A plain state dict beside its tokenizer: the architecture is inferred from the names and shapes.
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file({k: v.contiguous() for k, v in model.clip.state_dict().items()}, str(plain / "weights.safetensors"))
    shutil.copy(siglip_model / "tokenizer.json", plain)
    inferred = load_model(str(plain / "weights.safetensors"))
    assert (inferred.arch, inferred.arch_source, inferred.warnings) == (SIGLIP_ARCH, "inferred", [])  # no QuickGELU guess for SigLIP
    assert torch.equal(inferred.model.tokenize(CAPTIONS), tokens)
    assert torch.equal(pickle.loads(pickle.dumps(model.tokenizer))(CAPTIONS), tokens)  # data workers get it pickled


def test_a_siglip_file_without_its_tokenizer_exits_2_naming_what_is_expected(capsys, siglip_model, eval_data, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(siglip_model / "open_clip_model.safetensors", alone / "model.safetensors")
    code = clipsan.cli.main(["eval", str(alone / "model.safetensors"), "--data", str(eval_data)])  # in-process: the CLI's own error path
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("clipsan eval:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert str(alone / "model.safetensors") in errors[0] and "tokenizer.json or spiece.model" in errors[0]
    empty = tmp_path / "no-tokenizer"
    shutil.copytree(siglip_model, empty, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(UserError, match=r"expected its tokenizer, tokenizer\.json or spiece\.model, there"):
        load_model(str(empty))


def _with_record(path: Path, out: Path, change) -> Path:
    """A copy of clipsan's SigLIP safetensors ``path`` whose tokenizer record is changed (a hostile or damaged file)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from clipsan.checkpoints.tokenizer_files import META_TOKENIZER

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    record = json.loads(metadata[META_TOKENIZER])
    metadata[META_TOKENIZER] = change if isinstance(change, str) else json.dumps({**record, **change})
    out.mkdir()
    shutil.copy(path.parent / record["file"], out / record["file"])
    save_file(tensors, str(out / path.name), metadata=metadata)
    return out / path.name


@pytest.mark.parametrize(
    "change",
    [{"pad_id": "0"}, {"pad_id": 10**30}, {"pad_id": -1}, {"pad_id": 10**6}, {"eos_id": True}, {"open_clip_clean": "rot13"}]
    + [{"style": "bpe"}, {"lower": "no"}, {"file_name": 3}, "[1, 2]", "{"],
    ids=str,
)
def test_a_lying_tokenizer_record_is_refused_in_one_line(siglip_model, tmp_path, change):
    # The record in clipsan's own SigLIP output is read back from an untrusted file: every field is checked
    # before use (a negative or too-large pad id would otherwise index past the text embedding).
    loaded = load_model(str(siglip_model))
    single = write_output(OutputPlan("safetensors", tmp_path / "single" / "m.safetensors"), loaded.model, loaded.source, {})
    assert torch.equal(load_model(str(single)).model.tokenize(CAPTIONS), loaded.model.tokenize(CAPTIONS))
    with pytest.raises(UserError, match=r"m\.(safetensors|tokenizer\.json): .*(tokenizer record|not JSON|vocabulary)") as err:
        load_model(str(_with_record(single, tmp_path / "lying", change)))
    assert "\n" not in str(err.value)


def test_a_tokenizer_that_emits_ids_past_the_models_vocabulary_is_refused(siglip_model, tmp_path):
    loaded = load_model(str(siglip_model))
    tokenizer = loaded.model.tokenizer
    tokenizer.vocab_limit = 3  # as if the folder's tokenizer were larger than the model's text embedding
    with pytest.raises(UserError, match=r"tokenizer\.json: token id \d+ is past the model's 3-token vocabulary"):
        tokenizer(CAPTIONS)

"""The checkpoint layouts people download, against the libraries that define them (transformers, open_clip).

Every model is random-init and built here (no download). Equivalence is the bar: clipsan's
image and text embeddings of a checkpoint equal its own library's within 1e-5 (fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipsan.checkpoints import hf_names, load_model, save_model
from clipsan.checkpoints.output import OutputPlan, write_output
from clipsan.checkpoints.tokenizer_files import write_files
from clipsan.errors import UserError
from clipsan.models import create_model
from clipsan.openclip import open_clip
from conftest import run_cli, strict_loads

transformers = pytest.importorskip("transformers")

TOL = 1e-5
CAPTIONS = ["a photo of a cat.", "a small red circle above a blue square on a gray background", "Ünïcode naïve café — 東京"]
# Head width 64 (as every OpenAI CLIP): the one a weights file without config.json is assumed to have.
SMALL = {
    "text_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision_config": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    "projection_dim": 64,
}
# Every field open_clip spells differently: head width 32, odd MLP widths, LayerNorm eps, GELU, short context.
ODD = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 40,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    },
    "vision_config": {
        "hidden_size": 96,
        "intermediate_size": 144,
        "num_hidden_layers": 2,
        "num_attention_heads": 3,
        "image_size": 48,
        "patch_size": 16,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
    },
    "projection_dim": 40,
}


def hf_model(config: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return transformers.CLIPModel(transformers.CLIPConfig(**(config or {}))).eval()


def save_folder(model, folder: Path, tokenizer: bool = True, **kw) -> Path:
    model.save_pretrained(folder, **kw)
    if tokenizer:
        write_files(folder, model.config.text_config.max_position_embeddings)
    return folder


def pixels(size: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def hf_embeddings(model, images01: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    image = features(model.get_image_features(pixel_values=(images01 - mean) / std))
    return image, features(model.get_text_features(input_ids=tokens))


def features(output) -> torch.Tensor:
    """transformers >= 5 returns an output object (the projected features are its pooler_output), earlier a tensor."""
    return getattr(output, "pooler_output", output)


@torch.no_grad()
def clipsan_embeddings(model, images01: torch.Tensor, captions=CAPTIONS) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    return model.encode_image(images01, normalize=False), model.encode_text(model.tokenize(captions), normalize=False)


def assert_equivalent(hf, clipsan_model, image_size: int, tol: float = TOL) -> None:
    images = pixels(image_size)
    ours = clipsan_embeddings(clipsan_model, images)
    theirs = hf_embeddings(hf, images, clipsan_model.tokenize(CAPTIONS))
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < tol


# --------------------------------------------------------------------------- transformers -> clipsan


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[object, Path]:
    model = hf_model(SMALL)
    return model, save_folder(model, tmp_path_factory.mktemp("hf") / "small-clip")


def test_small_folder_file_shards_and_bin_equal_transformers(small, tmp_path):
    model, folder = small
    sharded = save_folder(model, tmp_path / "sharded", max_shard_size="1MB")
    assert len(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    old_style = tmp_path / "bin"  # a pre-safetensors folder: pytorch_model.bin, with the position_ids buffers old versions saved
    old_style.mkdir()
    (old_style / "config.json").write_text((folder / "config.json").read_text())
    state = dict(model.state_dict())
    state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    torch.save(state, old_style / "pytorch_model.bin")
    for spec, layout in ((folder, "transformers"), (sharded, "transformers"), (old_style, "transformers"), (folder / "model.safetensors", "transformers-file")):
        loaded = load_model(str(spec))
        assert (loaded.layout, loaded.activation) == (layout, "quick_gelu")
        assert_equivalent(model, loaded.model, 32)
    folder_load = load_model(str(folder))
    assert folder_load.arch_source == "config.json" and "config.json hidden_act" in folder_load.activation_source
    assert any("CLIP's BPE" in note for note in folder_load.notes)  # the folder's tokenizer was checked
    alone = load_model(str(folder / "model.safetensors"))
    # No config.json: the shapes give the architecture, and the assumptions are stated.
    assert alone.arch_source == "shapes" and any("num_attention_heads" in w and "quick_gelu" in w for w in alone.warnings)


def test_every_config_field_maps(tmp_path):
    model = hf_model(ODD, seed=3)
    loaded = load_model(str(save_folder(model, tmp_path / "odd")))
    cfg = loaded.model.model_cfg
    assert cfg["vision_cfg"]["head_width"] == 32 and cfg["text_cfg"]["context_length"] == 40 and "quick_gelu" not in cfg
    assert cfg["text_cfg"]["norm_kwargs"] == {"eps": 1e-6} and loaded.activation == "gelu"
    assert_equivalent(model, loaded.model, 48)


def test_fp16_folder_is_upcast(tmp_path):
    half = save_folder(hf_model(SMALL).half(), tmp_path / "fp16")
    loaded = load_model(str(half))
    assert any("float16 weights upcast to float32" in note for note in loaded.notes)
    # The reference is transformers' own model of the fp16 file, upcast: the same weights, computed in fp32.
    reference = transformers.CLIPModel.from_pretrained(half).float().eval()
    assert_equivalent(reference, loaded.model, 32)


def test_clipsan_tokens_give_the_folders_own_tokenizer_features(small):
    model, folder = small
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    loaded = load_model(str(folder)).model.eval()
    with torch.no_grad():
        theirs = features(model.get_text_features(**tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt")))
        ours = loaded.encode_text(loaded.tokenize(CAPTIONS), normalize=False)
    assert (theirs - ours).abs().max().item() < TOL  # same BPE; padding differs (0 vs <|endoftext|>), features do not


def test_a_folder_with_another_vocabulary_is_refused(small, tmp_path):
    _, folder = small
    other = tmp_path / "other-vocab"
    other.mkdir()
    for name in ("config.json", "model.safetensors", "merges.txt"):
        (other / name).write_bytes((folder / name).read_bytes())
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]
    (other / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(UserError, match=r"vocab\.json: not CLIP's BPE vocabulary"):
        load_model(str(other))


# --------------------------------------------------------------------------- ViT-B/32 shapes


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory):
    """transformers' default CLIPConfig is openai/clip-vit-base-patch32's shape (~600 MB): built once."""
    model = hf_model()
    root = tmp_path_factory.mktemp("vit-b32")
    return model, save_folder(model, root / "clip-vit-b32", tokenizer=False), root


def test_vit_b32_folder_file_shards_and_fp16_equal_transformers(vit_b32):
    model, folder, root = vit_b32
    loaded = load_model(str(folder))
    assert loaded.arch == "ViT-B-32-quickgelu"  # config.json names open_clip's own architecture
    assert_equivalent(model, loaded.model, 224)
    del loaded
    alone = load_model(str(folder / "model.safetensors"))
    assert (alone.arch, alone.arch_source, alone.activation) == ("ViT-B-32-quickgelu", "inferred", "quick_gelu")
    assert any("--arch ViT-B-32 for gelu" in w for w in alone.warnings)
    assert_equivalent(model, alone.model, 224)
    del alone
    sharded = save_folder(model, root / "sharded", tokenizer=False, max_shard_size="200MB")
    assert_equivalent(model, load_model(str(sharded)).model, 224)
    half = save_folder(hf_model().half(), root / "fp16", tokenizer=False)
    assert_equivalent(transformers.CLIPModel.from_pretrained(half).float().eval(), load_model(str(half)).model, 224)


def test_quickgelu_survives_every_layout(tmp_path):
    torch.manual_seed(0)
    model = create_model("ViT-B-32-quickgelu").eval()
    images = pixels(224)
    expected = clipsan_embeddings(model, images)
    state = model.clip.state_dict()
    cases = {
        "clipsan safetensors": lambda p: save_model(model, p / "m.safetensors"),
        "transformers folder": lambda p: write_output(OutputPlan("hf", p / "hf"), model, None, {}),
        "open_clip folder": lambda p: write_output(OutputPlan("open_clip", p / "oc"), model, None, {}),
        "transformers weights alone": lambda p: write_output(OutputPlan("hf", p / "alone"), model, None, {}) / "model.safetensors",
        "OpenAI clip package .pt": lambda p: _torch_save({**state, "input_resolution": torch.tensor(224), "context_length": torch.tensor(77)}, p / "openai.pt"),
        "CleanCLIP checkpoint": lambda p: _torch_save({"epoch": 1, "name": "x", "state_dict": _ddp(state), "optimizer": {}}, p / "epoch_1.pt"),
    }
    for name, write in cases.items():
        written = write(tmp_path)
        loaded = load_model(str(written))
        assert loaded.activation == "quick_gelu", name
        for a, b in zip(clipsan_embeddings(loaded.model, images), expected):
            assert torch.equal(a, b), name
        del loaded
        _remove(written)
    # A bare state dict records nothing: GELU by default, said with the --arch that overrides it.
    bare = tmp_path / "bare.safetensors"
    save_file(state, str(bare))
    guessed = load_model(str(bare))
    assert guessed.activation == "gelu" and any("--arch ViT-B-32-quickgelu" in w for w in guessed.warnings)
    del guessed
    overridden = load_model(str(bare), arch="ViT-B-32-quickgelu")
    for a, b in zip(clipsan_embeddings(overridden.model, images), expected):
        assert torch.equal(a, b)


def _ddp(state: dict) -> dict:
    return {f"module.{k}": v for k, v in state.items()}


def _torch_save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _remove(path: Path) -> None:
    import shutil

    if path.name == "model.safetensors":  # a file of a written folder: the folder goes
        path = path.parent
    shutil.rmtree(path) if path.is_dir() else path.unlink()


# --------------------------------------------------------------------------- outputs in the input's layout


def purify(model, data, run_dir, *args):
    return run_cli("purify", model, "--method", "ft", "--data", data, "--batch-size", "8", "--run-dir", run_dir, "--format", "json", *args)


def test_purify_a_transformers_folder_gives_one_from_pretrained_loads(small, caption_data, tmp_path):
    model, source = small
    folder = tmp_path / "in"
    folder.mkdir()
    for item in source.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["_name_or_path"] = "someone/fine-tuned-clip"  # the user's own fields are carried over
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "purified"
    proc = purify(folder, caption_data, tmp_path / "run", "--max-steps", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = strict_loads(proc.stdout)
    assert (report["layout"], report["output_format"], report["output"], report["activation"]) == ("transformers", "hf", str(out), "quick_gelu")
    assert "transformers CLIPModel folder" in proc.stderr and "activation quick_gelu (config.json hidden_act)" in proc.stderr
    written = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json"} <= written
    assert json.loads((out / "config.json").read_text())["_name_or_path"] == "someone/fine-tuned-clip"
    purified = transformers.CLIPModel.from_pretrained(out).eval()
    again = load_model(str(out))
    assert again.layout == "transformers" and again.activation == "quick_gelu"
    assert_equivalent(purified, again.model, 32)
    changed = load_file(str(out / "model.safetensors"))["visual_projection.weight"]
    assert not torch.equal(changed, model.state_dict()["visual_projection.weight"])  # it was trained, not copied
    # --out-format safetensors gives clipsan's own file instead.
    proc = purify(folder, caption_data, tmp_path / "run2", "--max-steps", "1", "--out-format", "safetensors")
    assert proc.returncode == 0, proc.stderr
    assert strict_loads(proc.stdout)["output"] == str(tmp_path / "run2" / "purify.safetensors")


def test_open_clip_hub_folder_round_trip(caption_data, tmp_path):
    import open_clip

    torch.manual_seed(0)
    hub = write_output(OutputPlan("open_clip", tmp_path / "hub"), create_model("clipsan-tiny-rn"), None, {})
    out = tmp_path / "purified"
    proc = purify(hub, caption_data, tmp_path / "run", "--max-steps", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = strict_loads(proc.stdout)
    assert (report["layout"], report["output_format"], report["arch_source"]) == ("open_clip", "open_clip", "open_clip_config.json")
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is False  # stated, not left to a default
    theirs, _, _ = open_clip.create_model_and_transforms("clipsan-tiny-rn", pretrained=str(out / "open_clip_model.safetensors"))
    ours = load_model(str(out)).model.eval()
    images = pixels(32)
    tokens = ours.tokenize(CAPTIONS)
    with torch.no_grad():
        theirs.eval()
        mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        assert (theirs.encode_image((images - mean) / std) - ours.encode_image(images, normalize=False)).abs().max() < TOL
        assert (theirs.encode_text(tokens) - ours.encode_text(tokens, normalize=False)).abs().max() < TOL


def test_a_resnet_cannot_be_written_as_transformers_and_says_so_before_training(tiny_model, caption_data, tmp_path):
    proc = run_cli("purify", tiny_model, "--method", "ft", "--data", caption_data, "--max-steps", "1", "--run-dir", tmp_path / "run", "--out-format", "hf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot be written as a transformers CLIPModel: its image tower is a ResNet" in proc.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "run").glob("checkpoints/*"))  # refused before any step


# --------------------------------------------------------------------------- refusals


def test_other_families_and_broken_folders_exit_2_in_one_line(small, eval_data, tmp_path):
    _, folder = small
    align = tmp_path / "align"  # another family sharing the layout (SigLIP's own tests: tests/test_siglip_layouts.py)
    align.mkdir()
    (align / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), "model_type": "align"}))
    (align / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    truncated = tmp_path / "truncated"  # one layer's weights lost
    truncated.mkdir()
    (truncated / "config.json").write_text((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("vision_model.encoder.layers.1.")}, str(truncated / "model.safetensors"))
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "config.json").write_text((folder / "config.json").read_text())
    save_file({**state, "text_model.pooler.weight": torch.zeros(2)}, str(extra / "model.safetensors"))
    sigmoid = tmp_path / "sigmoid"
    sigmoid.mkdir()
    (sigmoid / "config.json").write_text((folder / "config.json").read_text())
    save_file({**state, "logit_bias": torch.zeros(1)}, str(sigmoid / "model.safetensors"))
    missing_shard = tmp_path / "missing-shard"
    missing_shard.mkdir()
    (missing_shard / "config.json").write_text((folder / "config.json").read_text())
    (missing_shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "model-00002-of-00002.safetensors" for k in state}}))
    cases = {
        align: "ALIGN (EfficientNet image tower, BERT text tower) model, not CLIP",
        truncated: "16 missing keys (vision_model.encoder.layers.1.",
    }
    for spec, message in cases.items():  # as a user meets them: exit 2, one line naming the file
        proc = run_cli("eval", spec, "--data", eval_data)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("clipsan eval:")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert str(spec) in errors[0] and message in errors[0], errors[0]
    for spec, message in {
        sigmoid: r"SigLIP weights \(logit_bias, attention-pooling head\) under a CLIPModel config\.json",
        extra: r"weights that a transformers CLIPModel does not have \(text_model\.pooler\.weight\)",
        missing_shard: "shard model-00002-of-00002.safetensors is missing",
    }.items():
        with pytest.raises(UserError, match=message):
            load_model(str(spec))


def test_one_tower_and_foreign_config_fields_are_refused(tmp_path):
    vision = tmp_path / "vision-only"
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**SMALL["vision_config"])).save_pretrained(vision)
    with pytest.raises(UserError, match="one CLIP tower"):
        load_model(str(vision))
    folder = save_folder(hf_model(SMALL), tmp_path / "silu", tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_act"] = config["vision_config"]["hidden_act"] = "silu"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="hidden_act 'silu' is not supported"):
        load_model(str(folder))


def test_name_map_round_trips():
    state = hf_model(SMALL).state_dict()
    converted, unknown = hf_names.to_open_clip(state)
    assert not unknown
    back = hf_names.to_transformers(converted)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)

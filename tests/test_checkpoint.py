"""Model creation, architecture inference and safe checkpoint I/O (offline, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clipsan import __version__
from clipsan.checkpoints import load_model, read_metadata, save_model, sha256_file
from clipsan.checkpoints.arch_inference import infer_arch, match_arch, shape_table
from clipsan.errors import UserError
from clipsan.models import ClipModel, create_model, register_archs

TINY = "clipsan-tiny-rn"


def assert_same_weights(a: ClipModel, b: ClipModel) -> None:
    sa, sb = a.clip.state_dict(), b.clip.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def plain_state(model: ClipModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.clip.state_dict().items()}


@pytest.fixture(scope="module")
def tiny() -> ClipModel:
    torch.manual_seed(0)
    return create_model(TINY)


@pytest.fixture(scope="module", params=["RN50", "ViT-B-32"])
def big(request) -> ClipModel:
    torch.manual_seed(0)
    return create_model(request.param)


# --------------------------------------------------------------------------- models


def test_register_archs_is_idempotent_and_visible_to_open_clip():
    import open_clip

    register_archs()
    register_archs()
    assert open_clip.list_models().count(TINY) == 1
    assert open_clip.get_model_config(TINY)["vision_cfg"]["image_size"] == 32


def test_tiny_model_encodes_and_tokenizes(tiny):
    assert (tiny.arch, tiny.image_size, tiny.context_length) == (TINY, 32, 32)
    assert "pixel_mean" not in tiny.state_dict()
    tokens = tiny.tokenize(["a red circle", "word " * 100])
    assert tokens.shape == (2, 32) and tokens.dtype == torch.long
    eot = tokens[0].max().item()
    assert tokens[1, -1].item() == eot  # truncation keeps the end-of-text token CLIP pools on
    with torch.no_grad():
        image_features, text_features = tiny(torch.rand(2, 3, 32, 32), tokens)
    assert image_features.shape == text_features.shape == (2, 128)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert tiny.logit_scale is tiny.clip.logit_scale


def test_unknown_arch_names_close_candidates():
    with pytest.raises(UserError, match="RN50"):
        create_model("RN5O")


def test_identical_twins_prefer_plain_name_and_report_alternatives():
    shapes = shape_table("RN50")
    assert infer_arch(shapes) == "RN50"
    assert "RN50-quickgelu" in match_arch(shapes).alternatives
    assert match_arch(shapes, prefer_quickgelu=True).arch == "RN50-quickgelu"


def test_no_match_names_closest_candidates_and_difference(tiny):
    shapes = {k: tuple(v.shape) for k, v in tiny.clip.state_dict().items()}
    shapes["positional_embedding"] = (40, 128)
    with pytest.raises(UserError) as err:
        infer_arch(shapes)
    assert TINY in str(err.value) and "positional_embedding" in str(err.value)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- round trips


def test_round_trip_with_metadata(tiny, tmp_path):
    out = save_model(tiny, tmp_path / "m.safetensors", {"clipsan.command": "purify", "clipsan.method": "ft"})
    meta = read_metadata(out)
    assert meta["clipsan.arch"] == TINY and meta["clipsan.version"] == __version__
    assert meta["format"] == "pt" and meta["clipsan.command"] == "purify" and meta["clipsan.method"] == "ft"
    assert json.loads(meta["clipsan.model_cfg"])["embed_dim"] == 128
    loaded = load_model(str(out))
    assert (loaded.arch, loaded.arch_source) == (TINY, "metadata")
    assert loaded.sha256 == sha256_file(out) and loaded.metadata == meta
    assert_same_weights(tiny, loaded.model)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_the_same_model_is_written_as_the_same_bytes(tiny, tmp_path):
    # safetensors orders metadata by a per-map random hash: without sorting, two writes of one model
    # differ in sha256 (an intake pipeline hashing outputs, or comparing a resumed run, would see two models).
    metadata = {f"clipsan.field{i}": str(i) for i in range(12)}
    hashes = {sha256_file(save_model(tiny, tmp_path / f"m{i}.safetensors", metadata)) for i in range(4)}
    assert len(hashes) == 1
    assert read_metadata(tmp_path / "m0.safetensors")["clipsan.field11"] == "11"


def test_big_round_trip_with_inferred_arch(big, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(plain_state(big), str(path))  # no clipsan metadata: must be inferred
    loaded = load_model(str(path))
    assert (loaded.arch, loaded.arch_source) == (big.arch, "inferred")
    assert f"{big.arch}-quickgelu" in loaded.arch_alternatives
    assert_same_weights(big, loaded.model)


def test_arch_flag_wins_and_wrong_flag_names_file(tiny, tmp_path):
    path = save_model(tiny, tmp_path / "m.safetensors")
    assert load_model(str(path), arch=TINY).arch_source == "flag"
    with pytest.raises(UserError, match=r"m\.safetensors.*RN50"):
        load_model(str(path), arch="RN50")


def test_openai_layout_pt_loads(tiny, tmp_path):
    state = plain_state(tiny)
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(32), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai.pt"
    torch.save(state, path)
    loaded = load_model(str(path))
    # The original clip package's layout means OpenAI-trained weights: QuickGELU, said so.
    assert (loaded.arch, loaded.arch_source, loaded.layout, loaded.activation) == (f"{TINY}-quickgelu", "inferred", "openai", "quick_gelu")
    assert "OpenAI-trained" in loaded.activation_source
    assert_same_weights(tiny, loaded.model)


def test_cleanclip_nested_ddp_checkpoint_loads(tiny, tmp_path):
    checkpoint = {
        "epoch": 10,
        "name": "cleanclip",
        "state_dict": {f"module.{k}": v for k, v in plain_state(tiny).items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
    }
    path = tmp_path / "epoch_10.pt"
    torch.save(checkpoint, path)
    assert_same_weights(tiny, load_model(str(path)).model)


def test_local_dir_with_unknown_config(tiny, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    cfg = {"model_cfg": tiny.model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    cfg["model_cfg"]["text_cfg"]["heads"] = 4  # same shapes, different config: a new arch
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(plain_state(tiny), str(folder / "open_clip_model.safetensors"))
    loaded = load_model(f"local-dir:{folder}")
    assert loaded.arch == "my-model" and loaded.arch_source == "open_clip_config.json" and loaded.layout == "open_clip"
    assert torch.allclose(loaded.model.pixel_mean.flatten(), torch.full((3,), 0.5))
    assert_same_weights(tiny, loaded.model)
    again = load_model(str(save_model(loaded.model, tmp_path / "out.safetensors")))
    assert again.arch == "my-model" and torch.allclose(again.model.pixel_std.flatten(), torch.full((3,), 0.5))


def test_tied_tensors_are_saved(tmp_path):
    model = create_model(TINY)
    # A parameter that is a view of another one: shares storage, like tied weights.
    model.clip.text_projection = torch.nn.Parameter(model.clip.token_embedding.weight.data.T[:, :128])
    path = save_model(model, tmp_path / "tied.safetensors")
    assert read_metadata(path)["clipsan.arch"] == TINY


# --------------------------------------------------------------------------- refusals


class _RunsCode:
    """A pickle payload that writes a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickle_is_refused_without_running(tiny, tmp_path):
    control_marker, marker = tmp_path / "control", tmp_path / "pwned"
    control, evil = tmp_path / "control.pt", tmp_path / "evil.pt"
    torch.save({**plain_state(tiny), "x": _RunsCode(control_marker)}, control)
    torch.save({**plain_state(tiny), "x": _RunsCode(marker)}, evil)
    torch.load(control, weights_only=False)  # prove the payload is live
    assert control_marker.exists()
    with pytest.raises(UserError, match=r"evil\.pt: refusing to unpickle.*GLOBAL"):
        load_model(str(evil))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_safetensors_name_the_file(tiny, tmp_path, damage):
    path = save_model(tiny, tmp_path / "bad.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(4096))
    with pytest.raises(UserError, match=r"bad\.safetensors"):
        load_model(str(path))
    if damage == "garbage":
        with pytest.raises(UserError, match=r"bad\.safetensors"):
            read_metadata(path)


def test_garbage_pt_missing_file_and_directory(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a pickle" * 50)
    with pytest.raises(UserError, match=r"garbage\.pt"):
        load_model(str(garbage))
    with pytest.raises(UserError, match=r"nope\.safetensors: no such file"):
        load_model(str(tmp_path / "nope.safetensors"))
    with pytest.raises(UserError, match="a folder, but neither a transformers CLIP folder"):
        load_model(str(tmp_path))


def test_non_state_dict_pt_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match=r"list\.pt: expected a state dict"):
        load_model(str(path))


def test_unmatched_weights_name_candidates(tiny, tmp_path):
    state = plain_state(tiny)
    state["positional_embedding"] = torch.zeros(40, 128)
    path = tmp_path / "odd.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match=rf"odd\.safetensors: .*closest: {TINY}"):
        load_model(str(path))

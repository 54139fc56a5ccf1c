"""Captions travel as wide as the batch's longest one, and the text tower gives the full rows' answer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from clipsan import api
from clipsan.data.tokens import PAD_ID, WIDTH_STEP, drop_common_padding, drop_padding
from clipsan.engine import loader
from clipsan.models import create_model
from conftest import without_key_biases

TINY = "clipsan-tiny-rn"
CAPTIONS = ["a red circle", "there is a small blue square on a white background", "hi!"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model(TINY).train()


def test_drop_padding_keeps_every_token_up_to_the_longest_caption(tiny):
    full = tiny.tokenize(CAPTIONS)
    cut = drop_padding(full)
    last_real = max(int(row.nonzero()[-1]) for row in full)  # the longest caption's end-of-text token
    assert cut.shape[1] == -(-(last_real + 1) // WIDTH_STEP) * WIDTH_STEP < full.shape[1]
    assert torch.equal(cut, full[:, : cut.shape[1]])
    assert (full[:, cut.shape[1] :] == PAD_ID).all()  # only padding was dropped
    long = tiny.tokenize(["word " * 100])  # fills the context: nothing to drop
    assert torch.equal(drop_padding(long), long)


def test_drop_common_padding_gives_every_text_column_one_width(tiny):
    batch = {"text": tiny.tokenize(["a cat", "a dog"]), "text_aug": tiny.tokenize(CAPTIONS[1:]), "index": torch.arange(2)}
    out = drop_common_padding(dict(batch), ["text", "text_aug"])
    assert out["text"].shape[1] == out["text_aug"].shape[1] == drop_padding(batch["text_aug"]).shape[1]
    assert torch.equal(out["index"], batch["index"])


def _text_grads(model, tokens):
    features = model.encode_text(tokens)
    weights = torch.linspace(-1, 1, features.numel()).view_as(features)  # a loss that weighs every output differently
    params = [p for name, p in model.clip.named_parameters() if not name.startswith("visual.") and name != "logit_scale"]
    return features.detach(), torch.autograd.grad((features * weights).sum(), params)


def test_the_text_tower_gives_the_same_features_and_gradients_on_the_prefix(tiny):
    assert tiny.reads_text_prefix  # causal, pooled at the end-of-text token (as OpenAI's and LAION's CLIPs)
    full = tiny.tokenize(CAPTIONS)
    features_full, grads_full = _text_grads(tiny, full)
    features_cut, grads_cut = _text_grads(tiny, drop_padding(full))
    assert (features_full - features_cut).abs().max() < 1e-6
    for a, b in zip(grads_full, grads_cut, strict=True):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())


def test_a_tower_that_reads_every_position_gets_its_padding_back(tiny, monkeypatch):
    monkeypatch.setattr(type(tiny), "reads_text_prefix", property(lambda self: False))
    full = tiny.tokenize(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(tiny.encode_text(drop_padding(full)), tiny.encode_text(full))


def test_training_batches_ship_the_prefix_and_train_like_full_rows(tiny_model, caption_data, tmp_path, monkeypatch):
    shipped: list[int] = []
    cut = loader.drop_common_padding

    def watch(batch, columns):
        batch = cut(batch, columns)
        shipped.append(batch["text"].shape[1])
        return batch

    def train(name: str):
        training = api.TrainConfig(epochs=1, batch_size=16, lr=1e-4, warmup_steps=1, max_steps=3, workers=0)
        data, out = api.CaptionData(str(caption_data)), str(tmp_path / f"{name}.safetensors")
        api.purify(api.PurifyConfig(str(tiny_model), data, api.CleanCLIPConfig(), training=training, out=out, run_dir=str(tmp_path / name), device="cpu"))
        return load_file(str(tmp_path / f"{name}.safetensors"))

    monkeypatch.setattr(loader, "drop_common_padding", watch)
    trimmed = train("trimmed")
    assert shipped and max(shipped) < 32  # the tiny arch's context is 32 tokens; the world's captions are shorter
    monkeypatch.setattr(loader, "drop_common_padding", lambda batch, columns: batch)
    full, trimmed = without_key_biases(train("full")), without_key_biases(trimmed)
    moved = max((full[k] - without_key_biases(load_file(str(tiny_model)))[k]).abs().max().item() for k in full)
    assert moved > 1e-4, "training must move the weights for the comparison to mean anything"
    # Rounding differs (the matrices are narrower), so Adam's normalised steps differ a little.
    assert max((full[k] - trimmed[k]).abs().max().item() for k in full) < 0.05 * moved

"""CA@k / ASR@k from logits, templates, class-text embeddings, and the zero-shot eval loop on fakes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipsan.attacks.triggers import PatchTrigger
from clipsan.engine.runtime import Runtime
from clipsan.errors import UserError
from clipsan.evaluation.metrics import TopkMeter, attack_success, topk_correct
from clipsan.evaluation.templates import load_templates
from clipsan.evaluation.zeroshot import class_text_embeddings, zero_shot

# --- metrics ------------------------------------------------------------------------

# Rows ranked by hand:   row 0: 1,2,3,0   row 1: 0,2,3,1   row 2: 3,1,0,2   row 3: 0,1,2,3
LOGITS = torch.tensor(
    [
        [0.1, 0.9, 0.3, 0.2],
        [0.8, 0.1, 0.5, 0.3],
        [0.2, 0.3, 0.1, 0.9],
        [0.5, 0.4, 0.3, 0.2],
    ]
)
LABELS = torch.tensor([1, 2, 0, 3])  # true class at rank 1, 2, 3, 4


def as_lists(masks):
    return {k: v.tolist() for k, v in masks.items()}


def test_topk_correct_by_hand_and_k_clamped():
    assert as_lists(topk_correct(LOGITS, LABELS, (1, 2, 3, 10))) == {
        1: [True, False, False, False],
        2: [True, True, False, False],
        3: [True, True, True, False],
        10: [True, True, True, True],  # k > C counts as k = C
    }


def test_attack_success_excludes_target_class_images():
    # target 3 ranks 3rd in row 0, 3rd in row 1, 1st in row 2; row 3 (true class 3) is left out.
    assert as_lists(attack_success(LOGITS, LABELS, 3, (1, 3, 5))) == {
        1: [False, False, True],
        3: [True, True, True],
        5: [True, True, True],
    }


def test_counting_target_images_would_inflate_asr():
    # Two non-target images (one hit), two target-class images the model calls "target" anyway.
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    ours = attack_success(logits, labels, target=1, ks=(1,))[1]
    assert ours.tolist() == [True, False] and ours.float().mean() == 0.5
    counting_everything = (logits.argmax(1) == 1).float().mean()  # the CleanCLIP/BadCLIP way
    assert counting_everything == 0.75


def test_topk_meter_accumulates():
    meter = TopkMeter((1, 3))
    assert meter.count == 0 and all(math.isnan(v) for v in meter.fractions().values())
    meter.update(topk_correct(LOGITS[:2], LABELS[:2], (1, 3)))
    meter.update(topk_correct(LOGITS[2:], LABELS[2:], (1, 3)))
    meter.update(topk_correct(LOGITS[:0], LABELS[:0], (1, 3)))
    assert meter.count == 4
    assert meter.fractions() == {1: 0.25, 3: 0.75}
    with pytest.raises(ValueError):
        meter.update({1: torch.ones(2, dtype=torch.bool), 3: torch.ones(3, dtype=torch.bool)})


# --- templates ----------------------------------------------------------------------


def test_builtin_templates():
    openai = load_templates("openai")
    assert len(openai) == 80 and all(t.count("{}") == 1 for t in openai)
    assert "a photo of a {}." in openai
    simple = load_templates("simple")
    assert 1 <= len(simple) < len(openai) and all("{}" in t for t in simple)
    assert load_templates("photo") == ["a photo of a {}."]


def test_template_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a {} in {braces}\n\n  itap of my {}.  \n")
    assert load_templates(str(good)) == ["a {} in {braces}", "itap of my {}."]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\nno slot here\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: .*no \{\}"):
        load_templates(str(bad))
    with pytest.raises(UserError, match="templates file not found"):
        load_templates(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no templates"):
        load_templates(str(empty))


# --- fakes --------------------------------------------------------------------------

CLASSES = ["apple", "banana", "cherry"]
COLOURS = {"apple": (150, 0, 0), "banana": (0, 150, 0), "cherry": (0, 0, 150)}


class FakeClip(torch.nn.Module):
    """Text: one-hot of the class named in the text, bent toward an extra axis by templates starting with 'B'.

    Image: one-hot of its dominant colour channel, except a white centre on a
    reddish image, which the "backdoor" maps to banana.
    """

    image_size = 8

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
        self.texts: list[str] = []

    def logits(self, image_features, text_features):
        return self.logit_scale.exp() * image_features @ text_features.T

    def tokenize(self, texts):
        self.texts.extend(texts)
        return torch.arange(len(self.texts) - len(texts), len(self.texts)).view(-1, 1)

    def encode_text(self, tokens, normalize=True):
        rows = []
        for index in tokens[:, 0].tolist():
            text = self.texts[index]
            row = torch.zeros(4)
            row[next(i for i, c in enumerate(CLASSES) if c in text)] = 2.0
            if text.startswith("B"):
                row[3] = 2.0
            rows.append(row)
        features = torch.stack(rows)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, images, normalize=True):
        assert not self.training
        means = images.mean(dim=(2, 3))
        classes = means.argmax(dim=1)
        backdoor = (images[:, :, 3:5, 3:5].amin(dim=(1, 2, 3)) > 0.99) & (images[:, 0, 0, 0] > 0.3)
        classes = torch.where(backdoor, torch.tensor(1), classes)
        features = F.one_hot(classes, 4).float()
        return F.normalize(features, dim=-1) if normalize else features


class FakeDataset:
    def __init__(self, items):
        self.items = items  # (colour name or None for corrupt, label)
        self.classnames = CLASSES
        self.labels = [label for _, label in items]
        self.skipped = {"missing_file": 1}

    def __len__(self):
        return len(self.items)

    def load(self, index):
        colour, label = self.items[index]
        return (None if colour is None else Image.new("RGB", (8, 8), COLOURS[colour])), label


def test_class_text_embeddings_average_normalised_templates():
    embeddings = class_text_embeddings(FakeClip(), CLASSES, ["A {}", "B {}"], Runtime(torch.device("cpu"), "fp32"), batch_size=4)
    # per template: e_c and (e_c + e_3)/sqrt 2; averaged, then renormalised.
    mean = torch.tensor([1 + 1 / math.sqrt(2), 1 / math.sqrt(2)]) / 2
    expected_pair = mean / mean.norm()
    assert embeddings.shape == (3, 4)
    for c in range(3):
        assert torch.allclose(embeddings[c, [c, 3]], expected_pair, atol=1e-6)
        assert torch.allclose(embeddings[c].norm(), torch.tensor(1.0))


def eval_items():
    return [
        ("apple", 0),
        ("apple", 0),
        ("banana", 1),
        ("banana", 1),
        ("cherry", 2),
        ("cherry", 2),
        ("apple", 2),  # a red "cherry": misclassified as apple, and the backdoor fires on it
        (None, 0),  # corrupt
    ]


def test_evaluate_end_to_end_with_known_asr():
    trigger = PatchTrigger(torch.ones((3, 2, 2)))  # white 2x2 at the centre of 8x8: rows/cols 3..4
    model = FakeClip().train()
    result = zero_shot(model, FakeDataset(eval_items()), templates=["a photo of a {}."], ks=(1, 2, 5), trigger=trigger, target="Banana", batch_size=3)
    assert model.training  # mode restored
    assert result["n_images"] == 7
    assert result["ca"]["1"] == pytest.approx(6 / 7)
    assert result["ca"]["5"] == 1.0  # k clamped to the 3 classes
    # Non-target images: 2 apple + 3 cherry-labelled; the backdoor fires on the 3 red ones.
    assert result["n_asr_images"] == 5
    assert result["asr"]["1"] == pytest.approx(3 / 5)
    assert result["asr"]["5"] == 1.0
    assert result["skipped"] == {"missing_file": 1, "corrupt_image": 1}


def test_evaluate_without_trigger_and_bad_target():
    dataset = FakeDataset(eval_items())
    result = zero_shot(FakeClip(), dataset, templates=["{}"], ks=(1,))
    assert result["asr"] is None and result["n_asr_images"] is None
    assert result["ca"] == {"1": pytest.approx(6 / 7)}
    with pytest.raises(UserError, match="'durian' is not one of the 3 class names"):
        zero_shot(FakeClip(), dataset, templates=["{}"], trigger=PatchTrigger(torch.ones((3, 2, 2))), target="durian")


def test_evaluate_only_target_images_gives_no_asr_figure():
    dataset = FakeDataset([("banana", 1), ("banana", 1)])
    result = zero_shot(FakeClip(), dataset, templates=["{}"], ks=(1,), trigger=PatchTrigger(torch.ones((3, 2, 2))), target="banana")
    assert result["n_asr_images"] == 0 and result["asr"] == {"1": None}


def test_evaluate_all_corrupt_is_a_user_error():
    with pytest.raises(UserError, match="no readable images"):
        zero_shot(FakeClip(), FakeDataset([(None, 0)]), templates=["{}"])

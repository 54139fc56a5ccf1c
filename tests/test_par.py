"""PAR (Perturb and Recover): its loss against the equation written out here, the threshold, its
augmentation, resume, and PAR's structured triggers (shape, placement, determinism, a victim)."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clipsan import api
from clipsan.attacks.triggers import parse_trigger, trigger_from_spec
from clipsan.config import PARConfig
from clipsan.recipes.augment import par_augment_uint8
from clipsan.recipes.par import par_terms

TAU = PARConfig().threshold


def _equation(images, texts, frozen_images, frozen_texts, scale: float, tau: float) -> torch.Tensor:
    """L = L_CLIP - 1/2 (T(img) + T(txt)), written out row by row from the paper's definitions."""
    n = images.shape[0]
    clip = 0.0
    for i in range(n):
        row, column = scale * images[i] @ texts.T, scale * texts[i] @ images.T
        clip = clip + (-(row[i] - torch.logsumexp(row, 0)) - (column[i] - torch.logsumexp(column, 0))) / 2
    clip = clip / n
    terms = []
    for a, b in ((images, frozen_images), (texts, frozen_texts)):
        distance = sum(((a[i] - b[i]) ** 2).sum() for i in range(n)) / n
        terms.append(distance if distance <= tau else torch.zeros(()))
    return clip - 0.5 * (terms[0] + terms[1])


def _unit(*shape, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_loss_is_the_papers_equation():
    images, texts, frozen_images, frozen_texts = (_unit(6, 16, seed=s) for s in range(4))
    terms = par_terms(images, texts, frozen_images, frozen_texts, torch.tensor(20.0), TAU)
    expected = _equation(images, texts, frozen_images, frozen_texts, 20.0, TAU)
    assert abs(float(sum(terms.values())) - float(expected)) < 1e-5
    assert set(terms) == {"clip", "perturb_image", "perturb_text"}


def test_the_perturbation_pushes_the_embeddings_away_from_the_frozen_model():
    frozen = _unit(8, 16, seed=1)
    images = F.normalize(frozen + 0.1 * _unit(8, 16, seed=2), dim=-1).requires_grad_(True)  # close to f0: distance < tau
    terms = par_terms(images, _unit(8, 16, seed=3), frozen, _unit(8, 16, seed=4), torch.tensor(10.0), TAU)
    terms["perturb_image"].backward()
    # Gradient descent steps along -grad: away from the frozen model's embeddings.
    assert float((-images.grad * (images.detach() - frozen)).sum()) > 0


def test_a_term_past_the_threshold_is_zero_with_no_gradient():
    frozen = _unit(8, 16, seed=1)
    images = (-frozen).clone().requires_grad_(True)  # opposite: squared distance 4 > tau
    terms = par_terms(images, frozen, frozen, frozen, torch.tensor(10.0), TAU)
    assert float(terms["perturb_image"].detach()) == 0.0 and float(terms["perturb_text"]) == 0.0  # texts equal: distance 0 counts, and is 0
    terms["perturb_image"].backward()
    assert images.grad is None or float(images.grad.abs().max()) == 0.0
    near = par_terms(frozen, frozen, -frozen, frozen, torch.tensor(10.0), 4.5)  # the same distance under a larger tau counts
    assert float(near["perturb_image"]) == pytest.approx(-0.5 * 4.0)


def test_the_augmentation_is_deterministic_and_within_bounds():
    pixels = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config, mean = PARConfig(), (122, 116, 104)
    erase_pixel = torch.tensor(mean, dtype=torch.uint8).view(3, 1, 1)
    views = [par_augment_uint8(pixels, torch.Generator().manual_seed(s), config, mean) for s in range(40)]
    again = par_augment_uint8(pixels, torch.Generator().manual_seed(3), config, mean)
    assert torch.equal(views[3], again) and views[3].dtype == torch.uint8 and views[3].shape == pixels.shape
    brightened = [bool((v.int() > pixels.int()).any()) for v in views]
    erased = [int((v == erase_pixel).all(0).sum()) >= 4 for v in views]
    assert 8 <= sum(brightened) <= 32 and 8 <= sum(erased) <= 32  # p = 0.5 each
    for v in views:  # the noise is clipped at 0, so it only brightens: a darker pixel was erased
        darker = (v.int() < pixels.int()).any(0)
        assert bool((v == erase_pixel).all(0)[darker].all())
    never = PARConfig(noise_prob=0.0, erase_prob=0.0)
    assert torch.equal(par_augment_uint8(pixels, torch.Generator().manual_seed(1), never, mean), pixels)


def _par_config(model, data, tmp_path, name, **training):
    steps = api.TrainConfig(epochs=2, batch_size=8, lr=1e-4, warmup_steps=1, workers=0, save_every=1, log_every=1, **training)
    return api.PurifyConfig(str(model), api.CaptionData(str(data)), api.PARConfig(), training=steps, out=str(tmp_path / f"{name}.safetensors"),
                            run_dir=str(tmp_path / name), device="cpu")  # fmt: skip


def test_a_resumed_par_run_equals_an_uninterrupted_one(tiny_model, caption_data, tmp_path):
    api.purify(_par_config(tiny_model, caption_data, tmp_path, "a", max_steps=6))
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("run.lock"))
    shutil.rmtree(sorted((tmp_path / "b" / "checkpoints").iterdir())[-1])  # as if killed before the last step
    report = api.purify(dataclasses.replace(_par_config(tiny_model, caption_data, tmp_path, "b", max_steps=6), resume=True))
    assert report.resumed_from_step == 5 and report.method == "par"
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    before = load_file(str(tiny_model))
    assert any(not torch.equal(a[k], before[k]) for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["logit_scale"], before["logit_scale"])  # PAR does not train the scale


# --------------------------------------------------------------------------- PAR's structured triggers


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def test_badnet_stripes_is_a_striped_square_at_each_samples_place():
    trigger = parse_trigger("badnet-stripes", seed=4, size=6)
    images = _images()
    out = trigger.apply(images, [0, 1, 2])
    for i in range(3):
        x, y = trigger.corner(i, 32, 32)
        patch = out[i, :, y : y + 6, x : x + 6]
        assert set(patch.unique().tolist()) <= {0.0, 1.0}  # corners of the colour cube
        assert torch.equal(patch, patch[:, :1, :].expand_as(patch))  # one colour per column: vertical stripes
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[y : y + 6, x : x + 6] = False
        assert torch.equal(out[i][:, outside], images[i][:, outside])
    assert torch.equal(out, parse_trigger("badnet-stripes", seed=4, size=6).apply(images, [0, 1, 2]))  # fixed by the seed
    assert not torch.equal(out, parse_trigger("badnet-stripes", seed=5, size=6).apply(images, [0, 1, 2]))
    fixed = parse_trigger("badnet-stripes@3,5", size=6).apply(images)
    assert torch.equal(fixed[:, :, 5:11, 3:9], fixed[:1, :, 5:11, 3:9].expand(3, -1, -1, -1))


def test_blended_stripes_and_triangles_are_paper_patterns_blended_in():
    images = _images()
    trigger = parse_trigger("blended-stripes", seed=2)
    pattern = trigger.noise(32, 32)
    assert set(pattern.unique().tolist()) == {-1.0, 1.0} and torch.equal(pattern, pattern[:, :1, :].expand_as(pattern))  # vertical stripes
    assert torch.allclose(trigger.apply(images), (0.97 * images + 0.03 * pattern).clamp(0, 1))
    assert torch.equal(pattern, parse_trigger("blended-stripes", seed=2).noise(32, 32))
    assert not torch.equal(pattern, parse_trigger("blended-stripes", seed=3).noise(32, 32))
    triangles = parse_trigger("blended-triangles").noise(224, 224)
    assert triangles.shape == (3, 224, 224) and triangles.unique().tolist() == pytest.approx([0.4, 0.8])
    assert float(triangles[0, 13, 0]) == pytest.approx(0.4) and float(triangles[0, 0, 13]) == pytest.approx(0.8)  # 14-px tiles split on the diagonal
    assert torch.equal(triangles[:, :14, :14], triangles[:, 14:28, 14:28])
    assert torch.allclose(
        parse_trigger("blended-triangles").apply(images), (0.85 * images + 0.15 * parse_trigger("blended-triangles").noise(32, 32)).clamp(0, 1)
    )


def test_blended_text_changes_only_the_words_pixels():
    images = _images(2, 224)
    trigger = parse_trigger("blended-text")
    text = trigger.noise(224, 224)
    words = (text != 0).any(0)
    rows, columns = words.nonzero(as_tuple=True)
    assert 0.8 * 224 < int(columns.max() - columns.min()) < 224 and 80 < int(rows.float().mean()) < 144  # across the middle
    assert float(text[1:].abs().max()) == 0.0  # red
    out = trigger.apply(images)
    assert torch.equal(out[:, :, ~words], images[:, :, ~words]) and not torch.equal(out[:, :, words], images[:, :, words])
    assert torch.equal(trigger_from_spec(trigger.to_spec()).apply(images), out)


def test_a_structured_trigger_plants_a_working_backdoor(tiny_model, tmp_path):
    """From random init, 100 steps: blended-triangles (a whole-image pattern) sends images to banana."""
    from clipsan.data import world
    from clipsan.jobs.evaluate import run_evaluate

    world.write_caption_dataset(tmp_path / "train", 300, seed=0)
    world.write_eval_set(tmp_path / "eval", 2, seed=1)
    (tmp_path / "templates.txt").write_text("a {}.\n{}\n")
    victim = tmp_path / "victim.safetensors"
    training = api.TrainConfig(epochs=12, batch_size=32, lr=5e-3, warmup_steps=10, max_steps=100, batchnorm="train", workers=0, save_every=1000)
    attack = api.AttackConfig("blended-triangles:ratio=0.3", rate=0.3, natural_captions=True)
    api.poison(api.PoisonConfig(str(tiny_model), api.CaptionData(str(tmp_path / "train")), attack, training=training, out=str(victim),
                                run_dir=str(tmp_path / "run"), device="cpu"))  # fmt: skip

    def asr1(model, trigger) -> float:
        config = api.EvalConfig(
            (str(model),), str(tmp_path / "eval"), trigger=trigger, templates=str(tmp_path / "templates.txt"), ks=(1,), workers=0, device="cpu"
        )
        return run_evaluate(config, notes=lambda _m: None).models[0]["asr"]["1"]

    assert asr1(victim, "from-metadata") >= 0.8
    assert asr1(tiny_model, "blended-triangles:ratio=0.3") <= 0.2


def test_the_public_codes_schedule_is_the_default(config_of, tiny_model, caption_data):
    from clipsan.engine.optim import lr_for

    training = config_of(["purify", tiny_model, "--method", "par", "--data", caption_data]).training
    assert (training.epochs, training.batch_size, training.lr, training.weight_decay, training.betas) == (2, 2048, 3e-6, 1e-4, (0.9, 0.98))
    # From 3e-5 down to 3e-6 over the first half of the steps, then a cosine to 1e-9.
    rates = [lr_for(step, 100, training) for step in range(100)]
    assert rates[0] == pytest.approx(3e-5 - 2.7e-5 / 50) and rates[49] == pytest.approx(3e-6) and 1e-9 < rates[99] < 1e-8
    assert all(a >= b for a, b in itertools.pairwise(rates))
    # Flags still win: a weight decay, one beta, a warmup in steps.
    given = config_of(["purify", tiny_model, "--method", "par", "--data", caption_data, "--weight-decay", "0.2", "--beta2", "0.95", "--warmup", "5"]).training
    assert (given.weight_decay, given.betas, given.warmup_for(100)) == (0.2, (0.9, 0.95), 5)
    assert config_of(["purify", tiny_model, "--method", "ft", "--data", caption_data]).training.weight_decay == 0.1  # the others keep 0.1

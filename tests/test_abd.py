"""ABD: the AdvCLIP generator and losses, `clipsan craft-adv`, and `purify --method abd` with its craft stage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipsan.config.recipes import ABDConfig, CraftConfig
from clipsan.engine.loader import Sample, to_device
from clipsan.engine.runtime import Runtime
from clipsan.recipes import build_recipe
from clipsan.recipes.abd.advclip import (
    CraftFeatures,
    Discriminator,
    PatchBox,
    PatchGenerator,
    backdoor_loss,
    generator_terms,
    paste,
    topology_loss,
)
from clipsan.recipes.abd.patch import AdvPatch
from clipsan.recipes.abd.recipe import ABD
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.text.eda import eda
from conftest import cli_env


@pytest.mark.parametrize("size, side, corner", [(32, 5, 25), (224, 38, 172)])
def test_generator_output_range_and_patch_placement(size, side, corner):
    box = PatchBox.for_image(size)
    # AdvCLIP: side int(sqrt(0.03 * S^2)), 14 px (scaled) from the bottom-right corner.
    assert (box.x, box.y, box.side) == (corner, corner, side)
    with torch.no_grad():
        pattern = PatchGenerator(size, seed=0)()
    assert pattern.shape == (3, size, size)
    assert pattern.min().item() >= 0.0 and pattern.max().item() <= 1.0
    images = torch.rand(2, 3, size, size)
    patched = paste(images, box.crop(pattern), box)
    changed = (patched != images).any(dim=(0, 1))
    rows, cols = changed.nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (corner, corner + side - 1, corner, corner + side - 1)
    assert torch.equal(patched[..., corner : corner + side, corner : corner + side], box.crop(pattern).expand(2, -1, -1, -1))
    assert Discriminator(size, width=8)(patched).shape == (2,)


def test_generator_gets_gradient_through_the_patch_only_region():
    box = PatchBox.for_image(32)
    generator = PatchGenerator(32, seed=0)
    patched = paste(torch.rand(2, 3, 32, 32), box.crop(generator()), box)
    patched.sum().backward()
    assert generator.mix.weight.grad is not None and generator.mix.weight.grad.abs().sum() > 0


def test_backdoor_loss_on_a_hand_made_example():
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    suspect = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # tau = 0.1. Row 0: cos to suspect rows = (0.6, 0.0) -> -log(e^6 / (e^6 + e^0)) = log(1 + e^-6)
    # Row 1: cos = (0.8, 1.0), its positive is the 1.0 -> -log(e^10 / (e^8 + e^10)) = log(1 + e^-2).
    # L_bd is their mean: (0.00248 + 0.12693) / 2 = 0.06470.
    expected = (math.log(1 + math.exp(-6)) + math.log(1 + math.exp(-2))) / 2
    assert expected == pytest.approx(0.06470, abs=1e-5)
    assert backdoor_loss(reference, suspect).item() == pytest.approx(expected, rel=1e-6)
    # Scale does not matter (cosine), and the generator is *rewarded* by L_bd: its term is -w * L_bd.
    assert backdoor_loss(3 * reference, 0.5 * suspect).item() == pytest.approx(expected, rel=1e-6)
    feats = CraftFeatures(clean_images=torch.randn(2, 2), captions=torch.randn(2, 2), adv_images=suspect, reference_adv=reference)
    assert generator_terms(feats, bd_weight=4.0)["bd"].item() == pytest.approx(-4.0 * expected, rel=1e-6)
    assert "bd" not in generator_terms(CraftFeatures(feats.clean_images, feats.captions, suspect), bd_weight=4.0)


# --------------------------------------------------------------------------- AdvCLIP's topology term


def advclip_umap_by_hand(output: list[list[float]], target: list[list[float]], eps: float = 1e-7) -> float:
    """AdvCLIP's ``umap(output, target)`` as REFERENCE.md states it, in plain float64 Python loops."""

    def neighbours(rows):
        n = len(rows)
        unit = [[v / (math.sqrt(sum(x * x for x in row)) + eps) for v in row] for row in rows]
        distance = [[1.0 - sum(a * b for a, b in zip(unit[i], unit[j])) for j in range(n)] for i in range(n)]
        for i in range(n):
            distance[i][i] = 3.0
            nearest = min(distance[i])
            distance[i] = [d - nearest for d in distance[i]]
            distance[i][i] = 0.0
        similarity = [[((1.0 - d) + 1.0) / 2.0 for d in row] for row in distance]
        return [[v / sum(row) for v in row] for row in similarity]

    p, q = neighbours(target), neighbours(output)
    total = 0.0
    for p_row, q_row in zip(p, q):
        for a, b in zip(p_row, q_row):
            total += a * (math.log(a + eps) - math.log(b + eps)) + (1 - a) * (math.log(1 - a + eps) - math.log(1 - b + eps))
    return total


@pytest.mark.parametrize("n, dim, seed", [(16, 8, 0), (16, 128, 1), (5, 3, 2), (64, 32, 3)])
def test_topology_term_matches_advclips_formula_on_random_inputs(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    output, target = torch.randn(n, dim, generator=g) * 3, torch.randn(n, dim, generator=g)
    expected = advclip_umap_by_hand(output.double().tolist(), target.double().tolist())
    assert topology_loss(output, target).item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert topology_loss(target, target).item() == pytest.approx(0.0, abs=1e-4)  # identical structure: no loss
    # in the generator objective: -(umap(f(x), f(x')) + 5 umap(f(x'), g(t))), weight 1 (AdvCLIP's delta, gamma)
    clean, captions, adv = (torch.randn(n, dim, generator=g) for _ in range(3))
    topo = generator_terms(CraftFeatures(clean, captions, adv), bd_weight=0.0)["topo"].item()
    by_hand = advclip_umap_by_hand(clean.tolist(), adv.tolist()) + 5 * advclip_umap_by_hand(adv.tolist(), captions.tolist())
    assert topo == pytest.approx(-by_hand, rel=1e-4)


def test_topology_term_has_advclips_magnitude_and_a_gradient():
    # Summed over n^2 entries of near-uniform rows, the term is small next to 10 x InfoNCE (as in AdvCLIP).
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(16, 128, generator=g, requires_grad=True)
    terms = generator_terms(CraftFeatures(torch.randn(16, 128, generator=g), torch.randn(16, 128, generator=g), adv), bd_weight=0.0)
    assert abs(terms["topo"].item()) < 0.1 * abs(terms["adv_image"].item())
    terms["topo"].backward()
    assert adv.grad is not None and adv.grad.abs().sum() > 0


# --------------------------------------------------------------------------- the fine-tune's defaults and objectives


def test_abd_defaults_are_the_papers(config_of, tmp_path):
    config = ABDConfig()
    assert config_of(["purify", "v.safetensors", "--method", "abd", "--data", tmp_path]).recipe == config  # what the command line gives
    assert config.adv_prob == 1.0 and config.eda and config.objective == "clip"  # every image patched, EDA on every caption
    s = ABDConfig.paper_schedule
    assert (s.epochs, s.batch_size, s.lr) == (10, 64, 3e-6)  # §III-A's defense phase
    craft = CraftConfig()
    assert (craft.epochs, craft.batch_size, craft.lr, craft.patch_area) == (20, 16, 2e-4, 0.03)  # AdvCLIP's training, magnitude 0.03


def _abd_with_patch(**kw) -> ABD:
    recipe = build_recipe(ABDConfig(**kw))  # ABD, or ABDAlign for objective="align"
    recipe.patch = AdvPatch(torch.ones(3, 5, 5), PatchBox.for_image(32))
    return recipe


def _sample(index: int, caption: str = "a small red circle above a blue square on a gray background") -> Sample:
    pixels8 = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(index))
    return Sample(pixels8, None, caption, index, 0, 0)


def _views(recipe: ABD, sample: Sample) -> dict:
    """One sample's views as the loss sees them: shipped by a worker, then finished on the device."""
    views = recipe.views(sample)
    host = {name: value[None] for name, value in views.items() if torch.is_tensor(value)}
    batch = recipe.device_views(to_device(host, torch.device("cpu")), host)
    return {**views, **{name: value[0] for name, value in batch.items()}}


def test_by_default_every_image_carries_the_patch_and_every_caption_gets_eda():
    recipe = _abd_with_patch()
    box = recipe.patch.box
    for index in range(40):
        sample = _sample(index)
        views = _views(recipe, sample)
        assert torch.equal(box.crop(views["image"]), torch.ones(3, 5, 5))
        assert views["text"] == eda(sample.caption, sample.rng("abd-eda"))
    half = _abd_with_patch(adv_prob=0.5)
    patched = sum(torch.equal(half.patch.box.crop(_views(half, _sample(i))["image"]), torch.ones(3, 5, 5)) for i in range(40))
    assert 10 < patched < 30


class FlatClip(torch.nn.Module):
    """Features are normalised linear maps of the flattened inputs (texts are float rows here)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.image_proj = torch.nn.Parameter(torch.randn(3 * 32 * 32, 8, generator=g))
        self.text_proj = torch.nn.Parameter(torch.randn(6, 8, generator=g))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x):
        return torch.nn.functional.normalize(x.flatten(1) @ self.image_proj, dim=-1)

    def encode_text(self, x):
        return torch.nn.functional.normalize(x.float() @ self.text_proj, dim=-1)


@pytest.mark.parametrize("eda_on", [True, False])
def test_align_objective_is_cleanclip_with_the_adversarial_view(eda_on):
    clip_mode, align = _abd_with_patch(eda=eda_on), _abd_with_patch(eda=eda_on, objective="align")
    sample = _sample(3)
    plain, aligned = _views(clip_mode, sample), _views(align, sample)
    # align keeps the original pair and takes clip's (patched image, EDA caption) as its views
    assert torch.equal(aligned["image"], sample.pixels) and aligned["text"] == sample.caption
    assert torch.equal(aligned["image_aug"], plain["image"]) and aligned["text_aug"] == plain["text"]
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.rand(6, 3, 32, 32, generator=g),
        "image_aug": torch.rand(6, 3, 32, 32, generator=g),
        "text": torch.randn(6, 6, generator=g),
        "text_aug": torch.randn(6, 6, generator=g),
    }
    cpu = Runtime(torch.device("cpu"), "fp32")
    terms = align.loss_terms(FlatClip(), batch, cpu)
    reference = CleanCLIP().loss_terms(FlatClip(), batch, cpu)
    assert set(terms) == ({"clip", "inmodal_image", "inmodal_text"} if eda_on else {"clip", "inmodal_image"})
    for name in terms:
        assert terms[name].item() == pytest.approx(reference[name].item(), rel=1e-6)
    assert set(clip_mode.loss_terms(FlatClip(), {"image": batch["image"], "text": batch["text"]}, cpu)) == {"clip"}


# --------------------------------------------------------------------------- resume through the CLI


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clipsan", *map(str, args)], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out), err


def _kill_at_first_checkpoint(*runs: tuple[subprocess.Popen, Path, Path]) -> None:
    """SIGKILL each (process, checkpoints folder, final output) as soon as its first checkpoint exists."""
    pending, deadline = list(runs), time.time() + 240
    while pending:
        for run in list(pending):
            proc, checkpoints, output = run
            if checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()):
                proc.kill()
                proc.communicate()
                assert not output.exists(), "run finished before it could be killed"
                pending.remove(run)
            else:
                assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def _assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory) -> Path:
    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("reference") / "reference.safetensors"
    save_model(create_model("clipsan-tiny-rn"), path)
    return path


CRAFT = ["--epochs", "2", "--batch-size", "16", "--save-every", "1", "--log-every", "1", "--workers", "0", "--device", "cpu"]


def test_craft_adv_sigkill_then_resume_is_bitwise_equal(tiny_model, reference_model, caption_data, tmp_path):
    def args(name):
        return [
            "craft-adv",
            tiny_model,
            "--data",
            caption_data,
            "--reference",
            reference_model,
            "--run-dir",
            tmp_path / name,
            "--out",
            tmp_path / f"{name}.safetensors",
            *CRAFT,
        ]

    straight, killed = _start(*args("straight"), "--format", "json"), _start(*args("killed"))
    _kill_at_first_checkpoint((killed, tmp_path / "killed" / "checkpoints", tmp_path / "killed.safetensors"))
    resumed, _ = _finish(_start(*args("killed"), "--resume", "--format", "json"))
    report, _ = _finish(straight)
    assert report["steps"] == 8 and report["objective"] == "advclip+bd" and report["patch_box"]["side"] == 5
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] < 8
    _assert_same_tensors(tmp_path / "straight.safetensors", tmp_path / "killed.safetensors")
    # the critic (recipe state) resumed bitwise too
    critics = [
        torch.load(sorted((tmp_path / n / "checkpoints").iterdir())[-1] / "state.pt", weights_only=False)["recipe"]["discriminator"]
        for n in ("straight", "killed")
    ]
    assert critics[0].keys() == critics[1].keys() and all(torch.equal(critics[0][k], critics[1][k]) for k in critics[0])
    lines = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9)) and {"loss_bd", "loss_gan", "loss_critic", "loss_topo"} <= lines[0].keys()
    # the generator file is also a patch:FILE trigger at the recorded place
    from clipsan.attacks.triggers import parse_trigger

    box = report["patch_box"]
    trigger = parse_trigger(f"patch:{tmp_path / 'straight.safetensors'}@{box['x']},{box['y']}")
    patched = trigger.apply(torch.zeros(1, 3, 32, 32))
    assert torch.equal(patched[0, :, 25:30, 25:30], load_file(str(tmp_path / "straight.safetensors"))["patch"])
    assert (tmp_path / "straight.png").is_file()


ABD_ARGS = [
    "--method",
    "abd",
    "--craft-epochs",
    "1",
    "--craft-batch-size",
    "16",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--lr",
    "1e-4",
    "--warmup",
    "2",
    "--save-every",
    "1",
    "--log-every",
    "1",
    "--workers",
    "0",
    "--device",
    "cpu",
]


def test_abd_resumes_across_the_craft_to_fine_tune_boundary(tiny_model, caption_data, tmp_path):
    def args(name):
        return ["purify", tiny_model, "--data", caption_data, "--run-dir", tmp_path / name, "--out", tmp_path / f"{name}.safetensors", *ABD_ARGS]

    straight, in_craft, in_tune = _start(*args("straight"), "--format", "json"), _start(*args("in-craft")), _start(*args("in-tune"))
    _kill_at_first_checkpoint(
        (in_craft, tmp_path / "in-craft" / "craft" / "checkpoints", tmp_path / "in-craft" / "craft" / "generator.safetensors"),  # while crafting
        (in_tune, tmp_path / "in-tune" / "checkpoints", tmp_path / "in-tune.safetensors"),  # while fine-tuning
    )
    resumes = [_start(*args(name), "--resume", "--format", "json") for name in ("in-craft", "in-tune")]
    report, err = _finish(straight)
    assert "no --reference" in err  # plain AdvCLIP objective, and the user is told
    assert report["method"] == "abd" and report["steps"] == 6  # 64 pairs less 3 held out (5%) / 16 x 2 epochs
    assert (tmp_path / "straight" / "craft" / "generator.safetensors").is_file()
    (after_craft, _), (after_tune, _) = (_finish(p) for p in resumes)
    assert after_craft["resumed_from_step"] is None  # the fine-tune had not started: only the craft resumed
    assert after_tune["resumed_from_step"] is not None  # the crafted patch was kept, the fine-tune continued
    for name in ("in-craft", "in-tune"):
        _assert_same_tensors(tmp_path / "straight" / "craft" / "generator.safetensors", tmp_path / name / "craft" / "generator.safetensors")
        _assert_same_tensors(tmp_path / "straight.safetensors", tmp_path / f"{name}.safetensors")

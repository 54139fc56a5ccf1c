"""CleanCLIP and CleanerCLIP recipes: losses against hand arithmetic, DDP, views, end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipsan.config.recipes import METHODS, RECIPE_CONFIGS, ABDConfig, CleanCLIPConfig, CleanerCLIPConfig
from clipsan.engine.loader import EpochBatchSampler, Sample
from clipsan.engine.runtime import Runtime
from clipsan.recipes import build_recipe
from clipsan.recipes import cleanerclip as cleanerclip_module
from clipsan.recipes.augment import auto_augment
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.recipes.cleanerclip import CleanerCLIP, epoch_subset
from clipsan.recipes.losses import contrastive_loss, positive_negative_loss
from conftest import cli_env

CPU = Runtime(torch.device("cpu"), "fp32")


class LinearClip(nn.Module):
    """A stand-in CLIP: features are normalised linear maps of the inputs (texts are float rows here)."""

    def __init__(self, dim: int = 2, seed: int | None = None, scale: float = 10.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        init = (lambda: torch.randn(dim, dim, generator=g)) if g is not None else (lambda: torch.eye(dim))
        self.image_proj, self.text_proj = nn.Parameter(init()), nn.Parameter(init())
        self.logit_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def encode_image(self, x):
        return F.normalize(x.float() @ self.image_proj, dim=-1)

    def encode_text(self, x):
        return F.normalize(x.float() @ self.text_proj, dim=-1)


def unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def dot(u, v) -> float:
    return sum(a * b for a, b in zip(u, v))


def hand_info_nce(anchors, candidates, scale) -> float:
    total = 0.0
    for i, a in enumerate(anchors):
        total -= math.log(math.exp(scale * dot(a, candidates[i])) / sum(math.exp(scale * dot(a, c)) for c in candidates))
    return total / len(anchors)


def hand_pn_half(anchors, positives, negatives, t_p, t_n) -> float:
    total = 0.0
    for i, a in enumerate(anchors):
        denominator = sum(math.exp(dot(a, p) / t_p) for p in positives) + sum(math.exp(dot(a, n) / t_n) for n in negatives)
        total -= math.log(math.exp(dot(a, positives[i]) / t_p) / denominator)
    return total / len(anchors)


def batch_of(rows: dict) -> dict:
    return {k: torch.tensor(v, dtype=torch.float32) if k != "subcaption_mask" else torch.tensor(v) for k, v in rows.items()}


# Five pairs of 2-d unit features; rows 0, 2 and 3 are selected for sub-captions.
ROWS = {
    "image": [unit(0.0), unit(1.0), unit(2.0), unit(3.0), unit(4.0)],
    "image_aug": [unit(0.2), unit(1.3), unit(1.8), unit(3.5), unit(4.1)],
    "text": [unit(0.4), unit(0.9), unit(2.6), unit(2.9), unit(4.4)],
    "text_aug": [unit(0.5), unit(1.1), unit(2.2), unit(3.2), unit(5.0)],
    "subcaption_pos": [unit(0.1), unit(9.0), unit(2.3), unit(3.1), unit(9.0)],
    "subcaption_neg": [unit(1.5), unit(9.0), unit(3.7), unit(5.9), unit(9.0)],
    "subcaption_mask": [1, 0, 1, 1, 0],
}
SELECTED = [0, 2, 3]


def test_cleanclip_terms_match_eq1_and_eq3_by_hand():
    scale = 10.0
    terms = CleanCLIP(CleanCLIPConfig(clip_weight=1.0, inmodal_weight=2.0)).loss_terms(LinearClip(scale=scale), batch_of(ROWS), CPU)
    assert set(terms) == {"clip", "inmodal_image", "inmodal_text"}
    clip = 0.5 * (hand_info_nce(ROWS["image"], ROWS["text"], scale) + hand_info_nce(ROWS["text"], ROWS["image"], scale))
    assert terms["clip"].item() == pytest.approx(clip, rel=1e-5)
    # eq. 3: image -> its own augmented view, caption -> its own EDA view, halves averaged, times λ2 = 2
    assert terms["inmodal_image"].item() == pytest.approx(2.0 * 0.5 * hand_info_nce(ROWS["image"], ROWS["image_aug"], scale), rel=1e-5)
    assert terms["inmodal_text"].item() == pytest.approx(2.0 * 0.5 * hand_info_nce(ROWS["text"], ROWS["text_aug"], scale), rel=1e-5)


def test_inmodal_loss_is_the_clip_loss_form_on_augmented_pairs():
    # With the views equal to the originals, each in-modal half is CLIP's loss with the view as the other modality.
    same = {**ROWS, "image_aug": ROWS["image"], "text_aug": ROWS["text"]}
    terms = CleanCLIP().loss_terms(LinearClip(scale=10.0), batch_of(same), CPU)
    images, texts = torch.tensor(ROWS["image"]), torch.tensor(ROWS["text"])
    scale = torch.tensor(10.0)
    assert 2 * terms["inmodal_image"].item() == pytest.approx(contrastive_loss(images, images, scale).item(), rel=1e-5)
    assert 2 * terms["inmodal_text"].item() == pytest.approx(contrastive_loss(texts, texts, scale).item(), rel=1e-5)


@pytest.mark.parametrize("t_p, t_n", [(0.3, 0.3), (0.3, 0.7), (0.6, 0.3)])
def test_pn_loss_on_three_selected_pairs_by_hand(t_p, t_n):
    recipe = CleanerCLIP(CleanerCLIPConfig(t_pos=t_p, t_neg=t_n, beta=1.0))
    terms = recipe.loss_terms(LinearClip(), batch_of(ROWS), CPU)
    pick = {k: [v[i] for i in SELECTED] for k, v in ROWS.items()}
    i2t = hand_pn_half(pick["image"], pick["subcaption_pos"], pick["subcaption_neg"], t_p, t_n)
    t2i = hand_pn_half(pick["text"], pick["image"], pick["subcaption_neg"], t_p, t_n)
    assert terms["pn_i2t"].item() == pytest.approx(0.5 * i2t, rel=1e-5)
    assert terms["pn_t2i"].item() == pytest.approx(0.5 * t2i, rel=1e-5)
    # the library function alone, on the selected rows
    as_tensor = {k: torch.tensor(v) for k, v in pick.items() if k != "subcaption_mask"}
    a, b = positive_negative_loss(as_tensor["image"], as_tensor["text"], as_tensor["subcaption_pos"], as_tensor["subcaption_neg"], t_p, t_n)
    assert (a.item(), b.item()) == (pytest.approx(i2t, rel=1e-5), pytest.approx(t2i, rel=1e-5))


def test_weights_and_temperatures_enter_where_the_paper_puts_them():
    model, batch = LinearClip(), batch_of(ROWS)
    base = CleanerCLIP().loss_terms(model, batch, CPU)
    double_beta = CleanerCLIP(CleanerCLIPConfig(beta=2.0)).loss_terms(model, batch, CPU)
    double_alpha = CleanerCLIP(CleanerCLIPConfig(alpha=2.0)).loss_terms(model, batch, CPU)
    for name in ("pn_i2t", "pn_t2i"):
        assert double_beta[name].item() == pytest.approx(2 * base[name].item(), rel=1e-6)
        assert double_alpha[name].item() == pytest.approx(base[name].item(), rel=1e-6)
    for name in ("clip", "inmodal_image", "inmodal_text"):
        assert double_alpha[name].item() == pytest.approx(2 * base[name].item(), rel=1e-6)
        assert double_beta[name].item() == pytest.approx(base[name].item(), rel=1e-6)
    # t_n only divides the counterfactual logits: at a huge t_n each adds exp(~0) = 1 to the
    # denominator, and what remains is the positive-set InfoNCE at temperature t_p.
    pick = {k: [v[i] for i in SELECTED] for k, v in ROWS.items()}
    far = CleanerCLIP(CleanerCLIPConfig(t_pos=0.5, t_neg=1e6)).loss_terms(model, batch, CPU)["pn_i2t"].item() * 2
    positive_only = -sum(
        math.log(math.exp(dot(a, pick["subcaption_pos"][i]) / 0.5) / (sum(math.exp(dot(a, p) / 0.5) for p in pick["subcaption_pos"]) + len(SELECTED)))
        for i, a in enumerate(pick["image"])
    ) / len(SELECTED)
    assert far == pytest.approx(positive_only, rel=1e-5)


def test_pn_loss_is_zero_without_selected_pairs_and_backward_works():
    rows = {**ROWS, "subcaption_mask": [0, 0, 0, 0, 0]}
    model = LinearClip(seed=1)
    terms = CleanerCLIP().loss_terms(model, batch_of(rows), CPU)
    assert terms["pn_i2t"].item() == 0 and terms["pn_t2i"].item() == 0
    loss = sum(terms.values())
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- data parallelism: two gloo processes against one process on the same global batch ---------


def random_batch(n: int, mask: list[int], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = {k: torch.randn(n, 4, generator=g) for k in ("image", "image_aug", "text", "text_aug", "subcaption_pos", "subcaption_neg")}
    rows["subcaption_mask"] = torch.tensor(mask)
    return rows


MASKS = ([1, 0, 1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 0, 0, 0, 0])  # the second leaves rank 1 without selected rows


def losses_and_grads(rt: Runtime, batch: dict) -> list[tuple[dict, list]]:
    out = []
    for recipe in (CleanCLIP(CleanCLIPConfig(inmodal_weight=2.0)), CleanerCLIP(CleanerCLIPConfig(t_pos=0.3, t_neg=0.5, beta=1.5))):
        model = LinearClip(dim=4, seed=3)
        rt.begin_step(batch["image"].shape[0])
        terms = recipe.loss_terms(model, batch, rt)
        sum(terms.values()).backward()
        rt.sum_gradients(list(model.parameters()))
        out.append(({k: v.item() for k, v in terms.items()}, [p.grad.clone() for p in model.parameters()]))
    return out


def ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rt = Runtime(torch.device("cpu"), "fp32", rank, 2)
    results = []
    for seed, mask in enumerate(MASKS):
        full = random_batch(len(mask), mask, seed)
        half = len(mask) // 2
        shard = {k: v[rank * half : (rank + 1) * half] for k, v in full.items()}
        results.append(losses_and_grads(rt, shard))
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_all_gather_matches_single_process(tmp_path):
    # fork: the children need not import torch again (nothing here touches CUDA)
    torch.multiprocessing.start_processes(ddp_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for seed, mask in enumerate(MASKS):
            expected = losses_and_grads(CPU, random_batch(len(mask), mask, seed))
            for (terms, grads), (want_terms, want_grads) in zip(got[seed], expected):
                assert terms.keys() == want_terms.keys()
                for name in terms:
                    assert terms[name] == pytest.approx(want_terms[name], rel=1e-5, abs=1e-7), (rank, seed, name)
                for g, w in zip(grads, want_grads):
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        assert got[0][1][0]["pn_i2t"] > 0 and got[1][1][0]["pn_t2i"] > 0


# --- views ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(caption_data):
    from clipsan.data.captions import open_caption_dataset
    from clipsan.data.transforms import to_model_uint8

    dataset = open_caption_dataset(caption_data)
    out = []
    for index in range(8):
        image, caption = dataset.load(index)
        out.append((to_model_uint8(image, 32), image, caption, index))
    return dataset, out


def sample(pair, epoch: int, seed: int = 0) -> Sample:
    pixels, image, caption, index = pair
    return Sample(pixels, image, caption, index, epoch, seed)


def same_views(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_cleanclip_views_are_deterministic_per_key_and_redrawn_each_epoch(pairs):
    _, items = pairs
    recipe = CleanCLIP()
    state = torch.get_rng_state()
    torch.manual_seed(123)  # global RNG state must not matter
    first = [recipe.views(sample(p, epoch=0)) for p in items]
    torch.manual_seed(456)
    again = [recipe.views(sample(p, epoch=0)) for p in items]
    later = [recipe.views(sample(p, epoch=1)) for p in items]
    torch.set_rng_state(state)
    assert all(same_views(a, b) for a, b in zip(first, again))
    assert sum(not torch.equal(a["image_aug"], b["image_aug"]) for a, b in zip(first, later)) >= 4
    assert sum(a["text_aug"] != b["text_aug"] for a, b in zip(first, later)) >= 4
    v = first[0]
    assert v["image_aug"].shape == v["image"].shape == (3, 32, 32) and v["image_aug"].dtype == v["image"].dtype == torch.uint8  # pixels ship as uint8


def test_auto_augment_leaves_the_global_rng_alone():
    pixels = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = torch.get_rng_state()
    out = auto_augment(pixels, 7)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(out, auto_augment(pixels, 7))
    assert torch.equal(auto_augment(pixels, torch.Generator().manual_seed(3)), auto_augment(pixels, torch.Generator().manual_seed(3)))


def test_cleanerclip_selects_k_per_epoch_deterministically(pairs):
    dataset, items = pairs
    assert epoch_subset(100, 10, 0, 0) == epoch_subset(100, 10, 0, 0)
    assert epoch_subset(100, 10, 0, 0) != epoch_subset(100, 10, 0, 1)
    assert len(epoch_subset(100, 10, 0, 3)) == 10 and epoch_subset(5, 10, 0, 0) == set(range(5))

    recipe = CleanerCLIP(CleanerCLIPConfig(subcaptions_per_epoch=4))
    recipe.prepare(dataset)
    chosen = epoch_subset(len(dataset), 4, 0, 0)
    for pair in items:
        views = recipe.views(sample(pair, epoch=0))
        assert same_views(views, recipe.views(sample(pair, epoch=0)))
        assert int(views["subcaption_mask"]) == (pair[3] in chosen)
        if pair[3] in chosen:
            assert views["subcaption_pos"] and views["subcaption_neg"] != views["subcaption_pos"]
        else:
            assert views["subcaption_pos"] == views["subcaption_neg"] == ""


# --- CleanerCLIP's schedule: the K selected pairs in batches of their own ---------------------


class Sized:
    """Stands in for a caption dataset where only its size matters."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def epoch_batches(recipe, n: int, batch: int, epochs: int, seed: int = 0, world_size: int = 1) -> list[list[list[tuple[int, int]]]]:
    """Every rank's batches, as the engine's sampler yields them with the recipe's epoch order."""
    steps = (n // batch) * epochs
    return [
        list(EpochBatchSampler(n, batch, seed, steps, rank=rank, world_size=world_size, epoch_order=recipe.epoch_order(n, batch, seed)))
        for rank in range(world_size)
    ]


def schedule_batch(recipe, keys: list[tuple[int, int]], seed: int) -> dict:
    """A batch with random 4-d 'views' and the recipe's real selection mask for these keys."""
    g = torch.Generator().manual_seed(len(keys))
    rows = {k: torch.randn(len(keys), 4, generator=g) for k in ("image", "image_aug", "text", "text_aug", "subcaption_pos", "subcaption_neg")}
    rows["subcaption_mask"] = torch.tensor([int(index in recipe.selected(seed, epoch)) for epoch, index in keys])
    return rows


@pytest.mark.parametrize("k, contrast", [(20, 16), (5, 5)])
def test_every_selected_pair_is_in_an_lpn_contrast_set_of_the_configured_size(monkeypatch, k, contrast):
    n, batch = 2000, 16
    recipe = CleanerCLIP(CleanerCLIPConfig(subcaptions_per_epoch=k))
    recipe.prepare(Sized(n))
    sizes = []
    real = cleanerclip_module.positive_negative_loss
    monkeypatch.setattr(cleanerclip_module, "positive_negative_loss", lambda images, *rest: sizes.append(images.shape[0]) or real(images, *rest))
    (batches,) = epoch_batches(recipe, n, batch, epochs=2)
    assert len(batches) == 2 * (n // batch) and all(len(b) == batch for b in batches)
    model = LinearClip(dim=4, seed=0)
    for epoch in (0, 1):
        chosen = recipe.selected(0, epoch)
        mine = [b for b in batches if b[0][0] == epoch]
        trained = set()
        for keys in mine:
            held = [index for _, index in keys if index in chosen]
            assert len(held) in (0, contrast)  # a batch holds no selected pair, or a whole contrast set
            if held:
                terms = recipe.loss_terms(model, schedule_batch(recipe, keys, 0), CPU)
                assert terms["pn_i2t"] > 0 and terms["pn_t2i"] > 0
                assert len(set(held)) == contrast  # no pair twice in one contrast set
                trained |= set(held)
        assert trained == chosen  # every selected pair reaches L_p-n in its epoch
        assert sum(any(i in chosen for _, i in keys) for keys in mine) == math.ceil(k / batch)
    assert sizes and set(sizes) == {contrast}


def test_selected_batches_are_interleaved_and_split_evenly_across_processes():
    n, batch, k = 2000, 16, 40
    recipe = CleanerCLIP(CleanerCLIPConfig(subcaptions_per_epoch=k))
    recipe.prepare(Sized(n))
    (single,) = epoch_batches(recipe, n, batch, epochs=1)
    chosen = recipe.selected(0, 0)
    at = [step for step, keys in enumerate(single) if any(i in chosen for _, i in keys)]
    assert at == [20, 62, 104]  # 3 batches spread over the epoch's 125 steps, not bunched
    # two processes: each takes its half of every global batch; together they are the single-process batches
    ranks = epoch_batches(recipe, n, batch, epochs=1, world_size=2)
    assert [a + b for a, b in zip(*ranks)] == single
    # a run resumed mid-epoch sees exactly the batches an uninterrupted one would
    resumed = list(EpochBatchSampler(n, batch, 0, n // batch, start_step=50, epoch_order=recipe.epoch_order(n, batch, 0)))
    assert resumed == single[50:]


def test_recipes_without_selected_pairs_keep_the_engines_batches():
    assert CleanCLIP().epoch_order(100, 16, 0) is None
    assert CleanerCLIP(CleanerCLIPConfig(subcaptions_per_epoch=0)).epoch_order(100, 16, 0) is None


def test_registry_and_paper_defaults():
    assert set(METHODS) == set(RECIPE_CONFIGS) == {"ft", "cleanclip", "cleanerclip", "abd", "par"}
    for name, config_type in RECIPE_CONFIGS.items():  # each recipe is built from its own config, and named by it
        recipe = build_recipe(config_type())
        assert isinstance(recipe.config, config_type) and recipe.name == name
    align = build_recipe(ABDConfig(objective="align"))  # ABD's second reading is a recipe of its own
    assert align.name == "abd" and type(align).__name__ == "ABDAlign" and type(build_recipe(ABDConfig())).__name__ == "ABD"
    schedule = RECIPE_CONFIGS["cleanclip"].paper_schedule
    assert (schedule.epochs, schedule.batch_size, schedule.lr, schedule.warmup_steps) == (10, 64, 1e-5, 50)
    schedule = RECIPE_CONFIGS["cleanerclip"].paper_schedule
    assert (schedule.epochs, schedule.batch_size, schedule.lr, schedule.warmup_steps) == (10, 64, 4.5e-6, 10000)
    train = schedule.train_config(lr=1e-3, epochs=None)  # a flag overrides its paper value, None keeps it
    assert (train.lr, train.epochs, train.warmup_steps) == (1e-3, 10, 10000)


# --- end to end through the CLI -------------------------------------------------------------


def test_purify_cleanclip_and_cleanerclip_end_to_end(tiny_model, caption_data, tmp_path):
    common = [
        "--data",
        caption_data,
        "--device",
        "cpu",
        "--batch-size",
        "16",
        "--max-steps",
        "3",
        "--lr",
        "1e-4",
        "--warmup",
        "1",
        "--log-every",
        "1",
        "--holdout",  # the batches' arithmetic below is over all 64 pairs
        "0",
        "--format",
        "json",
    ]
    runs = {
        "cleanclip": ["--workers", "0"],
        "cleanerclip": ["--workers", "2", "--subcaptions-per-epoch", "32", "--beta", "2"],
    }
    procs = {
        method: subprocess.Popen(
            [sys.executable, "-m", "clipsan", "purify", str(tiny_model), "--method", method, "--run-dir", str(tmp_path / method), *map(str, common), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for method, extra in runs.items()
    }
    expected = {"cleanclip": {"clip", "inmodal_image", "inmodal_text"}, "cleanerclip": {"clip", "inmodal_image", "inmodal_text", "pn_i2t", "pn_t2i"}}
    for method, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        report = json.loads(out)
        assert report["method"] == method and report["steps"] == 3
        lines = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == [1, 2, 3]
        for record in lines:
            assert {f"loss_{t}" for t in expected[method]} <= record.keys()
            assert record["loss"] == pytest.approx(sum(record[f"loss_{t}"] for t in expected[method]), rel=1e-5)
        if method == "cleanerclip":
            # 64 pairs, batch 16: 4 steps per epoch; the 32 selected pairs fill 2 batches of their own at
            # steps 1 and 3 (0-based), so of the 3 steps run only the second has L_p-n.
            assert [r["loss_pn_i2t"] > 0 for r in lines] == [False, True, False]
            config = json.loads((tmp_path / method / "config.json").read_text())
            assert config["recipe"]["subcaptions_per_epoch"] == 32 and config["recipe"]["beta"] == 2.0

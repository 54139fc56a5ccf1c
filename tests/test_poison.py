"""`clipsan poison`: exact poison sets, label-consistent mode, metadata round trip, BadCLIP's patch, a real backdoor."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clipsan.attacks.badclip import optimize_badclip_patch
from clipsan.attacks.plan import mentions, plan_poison, template_captions
from clipsan.attacks.recipe import Poison
from clipsan.attacks.triggers import parse_trigger, trigger_from_spec
from clipsan.checkpoints import load_model, read_metadata
from clipsan.config import CaptionData, EvalConfig, PoisonConfig
from clipsan.config.attacks import AttackConfig, BadClipConfig
from clipsan.config.train import TrainConfig
from clipsan.data import world
from clipsan.data.captions import open_caption_dataset
from clipsan.engine.loader import Sample, to_device
from clipsan.errors import UserError
from clipsan.jobs.evaluate import run_evaluate
from clipsan.jobs.poison import run_poison
from conftest import run_json

CAPTIONS = [f"a red circle number {i}" if i % 7 else f"a small yellow banana next to square {i}" for i in range(1000)]


def quiet(_message: str) -> None:
    pass


def poison_config(model, data, attack, training, run_dir, out, resume=False) -> PoisonConfig:
    return PoisonConfig(
        str(model), CaptionData(str(data)), attack, training=training, out=str(out), run_dir=str(run_dir), resume=resume, device="cpu", precision="fp32"
    )


def test_rate_is_exact_round_of_rate_times_n():
    assert len(plan_poison(CAPTIONS, AttackConfig("badnet", rate=0.003), seed=0).captions) == 3
    assert len(plan_poison(CAPTIONS[:64], AttackConfig("badnet", rate=0.1), seed=0).captions) == 6  # 6.4
    assert len(plan_poison(CAPTIONS[:64], AttackConfig("badnet", rate=0.5 / 64), seed=0).captions) == 1  # half up
    with pytest.raises(UserError, match="poisons none"):
        plan_poison(CAPTIONS[:64], AttackConfig("badnet", rate=0.001), seed=0)


def test_selection_is_deterministic_in_seed_and_n():
    settings = AttackConfig("badnet", rate=0.05)
    first, again = plan_poison(CAPTIONS, settings, seed=3), plan_poison(CAPTIONS, settings, seed=3)
    assert first.captions == again.captions and first.digest() == again.digest()
    assert set(plan_poison(CAPTIONS, settings, seed=4).captions) != set(first.captions)
    templates = {t.replace("{}", "banana") for t in template_captions()}
    assert len(templates) == 80 and set(first.captions.values()) <= templates
    # A resumed run whose plan differs (other seed) is refused.
    recipe = Poison(parse_trigger("badnet"), plan_poison(CAPTIONS, settings, seed=4), settings)
    with pytest.raises(UserError, match="poisoned subset differs"):
        recipe.load_state_dict(Poison(parse_trigger("badnet"), first, settings).state_dict())


def test_label_consistent_touches_only_target_captions():
    attack = AttackConfig("badnet", rate=0.1, label_consistent=True)
    plan = plan_poison(CAPTIONS, attack, seed=0)
    eligible = [i for i, c in enumerate(CAPTIONS) if mentions(c, "banana")]
    assert plan.eligible == len(eligible) == 143 and len(plan.captions) == 14  # rate counts among them
    assert set(plan.captions) <= set(eligible) and set(plan.captions.values()) == {None}
    # The recipe triggers those images and keeps their captions; other samples pass through untouched.
    recipe = Poison(parse_trigger("blended"), plan, attack)
    pixels8 = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    poisoned, clean = sorted(plan.captions)[0], 1
    for index, triggered in ((poisoned, True), (clean, False)):
        # Workers ship the uint8 image and a flag; the trigger is applied on the device.
        view = recipe.views(Sample(pixels8, None, CAPTIONS[index], index, 0, 0))
        assert view["text"] == CAPTIONS[index] and torch.equal(view["image"], pixels8)
        host = {"image": view["image"][None], "poisoned": view["poisoned"][None], "index": torch.tensor([index])}
        image = recipe.device_views(to_device(host, torch.device("cpu")), host)["image"][0]
        assert torch.equal(image, pixels8.float() / 255) != triggered
    with pytest.raises(UserError, match="no caption"):
        plan_poison(CAPTIONS, AttackConfig("badnet", target="kiwi", label_consistent=True), seed=0)


def test_natural_captions_mention_the_target():
    plan = plan_poison(CAPTIONS, AttackConfig("badnet", rate=0.01, natural_captions=True), seed=0)
    assert plan.mode == "natural" and all("banana" in c for c in plan.captions.values())
    assert set(plan.captions.values()) <= set(CAPTIONS)  # the data's own
    generated = plan_poison(CAPTIONS, AttackConfig("badnet", target="kiwi", rate=0.01, natural_captions=True), seed=0)
    assert all(mentions(c, "kiwi") for c in generated.captions.values())


def test_cli_victim_metadata_round_trip_and_eval_from_metadata(tiny_model, caption_data, eval_data, tmp_path):
    out = tmp_path / "victim.safetensors"
    report = run_json(
        "poison",
        tiny_model,
        "--data",
        caption_data,
        "--trigger",
        "wanet",
        "--trigger-seed",
        "7",
        "--rate",
        "0.1",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "1e-4",
        "--run-dir",
        tmp_path / "run",
        "--out",
        out,
        "--workers",
        "0",
    )
    assert report["poisoned"] == 6 and report["eligible"] == 64 and report["caption_mode"] == "template"
    meta = read_metadata(out)
    assert meta["clipsan.target"] == "banana" and float(meta["clipsan.poison_rate"]) == 0.1
    assert trigger_from_spec(json.loads(meta["clipsan.trigger"])).to_spec() == parse_trigger("wanet", seed=7).to_spec()
    common = ["eval", out, "--data", eval_data, "--workers", "0", "--templates", "simple"]
    recorded = run_json(*common, "--trigger", "from-metadata")["models"][0]
    explicit = run_json(*common, "--trigger", "wanet", "--trigger-seed", "7", "--target", "banana")["models"][0]
    assert recorded["asr"] == explicit["asr"] and recorded["ca"] == explicit["ca"]


def test_badclip_patch_lowers_its_objective_and_is_saved(tiny_model, caption_data, tmp_path):
    settings = AttackConfig("badclip", rate=0.1, trigger_size=12, badclip=BadClipConfig(epochs=2, lr=0.1, batch_size=16, images=48))
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-5, warmup_steps=1, workers=0)
    report = run_poison(poison_config(tiny_model, caption_data, settings, cfg, tmp_path / "run", tmp_path / "v.safetensors"), notes=quiet)
    info = report.badclip
    assert info["loss_after"] < info["loss_before"] and report.caption_mode == "natural"
    saved = load_file(info["safetensors"])["patch"]
    assert saved.shape == (3, 12, 12) and Image.open(info["png"]).size == (12, 12)
    assert parse_trigger(f"patch:{info['png']}").patch.shape == (3, 12, 12)
    # The victim carries the exact patch; from-metadata rebuilds it.
    spec = json.loads(read_metadata(tmp_path / "v.safetensors")["clipsan.trigger"])
    assert spec["name"] == "badclip" and torch.equal(trigger_from_spec(spec).patch, saved)
    # Resume reuses the saved patch instead of optimizing again.
    again = run_poison(poison_config(tiny_model, caption_data, settings, cfg, tmp_path / "run", tmp_path / "v.safetensors", resume=True), notes=quiet)
    assert again.badclip["reused"] and torch.equal(load_file(info["safetensors"])["patch"], saved)


def test_badclip_text_and_image_objective_also_descends(tiny_model, caption_data):
    model = load_model(str(tiny_model)).model
    settings = BadClipConfig(epochs=2, lr=0.1, batch_size=16, images=32, objective="text+image")
    result = optimize_badclip_patch(model, open_caption_dataset(caption_data), "banana", settings, side=10, trigger_seed=0, seed=0, notes=quiet)
    assert result.loss_after < result.loss_before
    assert result.patch.shape == (3, 10, 10) and result.patch.min() >= 0 and result.patch.max() <= 1


def test_resumed_poisoning_equals_an_uninterrupted_one(tiny_model, caption_data, tmp_path):
    """The poisoned subset is recomputed on resume and must be the same: weights come out bitwise equal."""
    settings = AttackConfig("badnet", rate=0.25, trigger_size=6)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-4, warmup_steps=1, workers=0, save_every=1)
    run_poison(poison_config(tiny_model, caption_data, settings, cfg, tmp_path / "a", tmp_path / "a.safetensors"), notes=quiet)
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("run.lock"))
    checkpoints = sorted((tmp_path / "b" / "checkpoints").iterdir())
    shutil.rmtree(checkpoints[-1])  # as if killed before the last step
    report = run_poison(poison_config(tiny_model, caption_data, settings, cfg, tmp_path / "b", tmp_path / "b.safetensors", resume=True), notes=quiet)
    assert report.resumed_from_step == 7
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-world")
    world.write_caption_dataset(root / "train", 300, seed=0)
    world.write_eval_set(root / "eval", 2, seed=1)
    # Caption-like prompts: the tiny model only ever read world captions.
    (root / "templates.txt").write_text("a {}.\n{}\n")
    return root


def asr1(model, world_root, trigger, **kw) -> float:
    spec = EvalConfig(
        models=[str(model)], data=str(world_root / "eval"), trigger=trigger, templates=str(world_root / "templates.txt"), ks=(1,), workers=0, device="cpu", **kw
    )
    return run_evaluate(spec, notes=quiet).models[0]["asr"]["1"]


def test_poisoning_plants_a_working_backdoor(tiny_model, small_world, tmp_path):
    """From random init, 100 steps at a high rate: the trigger (not a bias toward banana) sends images to banana."""
    settings = AttackConfig("badnet@11,11", rate=0.3, trigger_size=10, natural_captions=True)
    cfg = TrainConfig(epochs=12, batch_size=32, lr=5e-3, warmup_steps=10, max_steps=100, batchnorm="train", workers=0, save_every=1000)
    victim = tmp_path / "victim.safetensors"
    run_poison(poison_config(tiny_model, small_world / "train", settings, cfg, tmp_path / "run", victim), notes=quiet)
    assert asr1(tiny_model, small_world, "badnet@11,11", trigger_size=10) <= 0.2
    recorded = asr1(victim, small_world, "from-metadata")
    assert recorded >= 0.8
    assert recorded == asr1(victim, small_world, "badnet@11,11", trigger_size=10, target="banana")
    # blended at ratio 0 is the identity: how often *clean* images already land on the target.
    assert asr1(victim, small_world, "blended:ratio=0") <= 0.2

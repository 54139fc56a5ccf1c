"""The lab's model families: ``--family siglip`` plans the CLIP lab's stages around its own clean model,
reads the world through a tokenizer of the world's words, and keeps its folder to itself."""

from __future__ import annotations

import pytest

from clipsan.checkpoints import load_model
from clipsan.checkpoints.tokenizer_files import siglip_tokenizer
from clipsan.config import WorldConfig
from clipsan.config.checks import ConfigError
from clipsan.config.lab import LabConfig
from clipsan.data import world
from clipsan.errors import UserError
from clipsan.lab.plan import LAB_ARCHS, LAB_TEMPLATES, make_plan, method_of
from clipsan.lab.runner import LabReport, build_world, claim_folder, train_clean_model
from clipsan.lab.world_tokenizer import EOS, UNK, write_world_tokenizer
from clipsan.models.registry import is_sigmoid_config, model_config


def test_the_world_tokenizer_reads_every_caption_and_prompt_without_unknown_words(tmp_path):
    tokenizer = siglip_tokenizer(write_world_tokenizer(tmp_path, LAB_TEMPLATES), 32)
    unk, eos, pad = (tokenizer._load().token_to_id(t) for t in (UNK, EOS, "<pad>"))
    texts = [world.render_sample(WorldConfig(), 3, i)[1] for i in range(300)]
    texts += [template.format(name) for template in LAB_TEMPLATES for name in world.classnames()]
    ids = tokenizer(texts)
    assert not (ids == unk).any()
    assert all(row[row != pad][-1] == eos for row in ids)  # SigLIP's end token after the words, then padding
    assert tokenizer(["a purple zebra"])[0].tolist()[:4] == [*tokenizer(["a purple"])[0].tolist()[:2], unk, eos]  # a word outside the world
    vocab = model_config(LAB_ARCHS["siglip"])["text_cfg"]["vocab_size"]
    assert tokenizer.vocab_size <= vocab  # every id is a row of the SigLIP arch's embedding


def test_siglip_plans_the_clip_labs_stages_around_a_sigmoid_clean_model(config_of, tmp_path):
    for quick in (True, False):
        clip, siglip = make_plan(quick), make_plan(quick, family="siglip")
        assert (clip.family, siglip.family) == ("clip", "siglip")
        assert is_sigmoid_config(model_config(siglip.arch)) and not is_sigmoid_config(model_config(clip.arch))
        # the same victims, defenses, extra rows and scans: the family changes the models, not the lab
        assert (siglip.attacks, siglip.defenses, siglip.extra_rows, siglip.scan_args) == (clip.attacks, clip.defenses, clip.extra_rows, clip.scan_args)
        clean = config_of(["purify", "init.safetensors", "--method", "ft", "--data", str(tmp_path), *siglip.clean_args])
        assert clean.training.batchnorm == "train" and clean.training.epochs >= 1
    picked = make_plan(True, attacks="blended", family="siglip")
    assert list(picked.attacks) == ["blended"] and all(method_of(d) for d in picked.defenses_for("blended"))


def test_the_family_is_checked_and_reaches_the_lab(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"--family.*clip, siglip"):
        LabConfig(out=tmp_path, family="align")
    import clipsan.lab.runner
    from clipsan.cli import main

    seen = []
    monkeypatch.setattr(clipsan.lab.runner, "run_lab", lambda opts, notes: seen.append(opts) or {"rows": [], "scan": [], "timings": {}})
    assert main(["lab", "--quick", "--family", "siglip", "--out", str(tmp_path / "lab"), "--format", "json"]) == 0
    assert seen[0].family == "siglip"
    assert main(["lab", "--family", "align", "--out", str(tmp_path / "lab")]) == 2


def test_one_lab_folder_holds_one_family(tmp_path):
    claim_folder(tmp_path / "lab", "siglip")
    claim_folder(tmp_path / "lab", "siglip")  # the same family again: its own folder
    with pytest.raises(UserError, match=r"lab: holds a --family siglip lab; give --family clip a folder of its own"):
        claim_folder(tmp_path / "lab", "clip")
    (tmp_path / "old" / "models").mkdir(parents=True)  # a lab folder from before the families: CLIP's
    with pytest.raises(UserError, match="holds a --family clip lab"):
        claim_folder(tmp_path / "old", "siglip")


@pytest.mark.usefixtures("one_thread")
def test_the_siglip_clean_model_carries_the_world_tokenizer_and_comes_back_from_the_cache(tmp_path, monkeypatch):
    """The family's own stage: a random-init SigLIP arch with the world's tokenizer, trained two steps by `clipsan purify`."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = LabConfig(out=tmp_path / "lab", family="siglip", train_pairs=64, max_steps=2, eval_per_class=1, parallel=1)
    plan = make_plan(True, config.train_pairs, config.max_steps, family="siglip")
    claim_folder(config.out, config.family)
    files = build_world(config, plan, LabReport())
    clean = train_clean_model(config, plan, files, LabReport())
    assert sorted(p.name for p in clean.parent.iterdir()) == ["clean.safetensors", "clean.tokenizer.json"]  # the init is gone
    model = load_model(str(clean)).model
    assert model.arch == plan.arch and model.family == "siglip"
    assert model.tokenize(["a photo of a banana."]).tolist() == siglip_tokenizer(files.tokenizer, model.context_length)(["a photo of a banana."]).tolist()
    # A second lab of the same settings copies the cached model and its tokenizer: it loads alike.
    again = LabConfig(out=tmp_path / "lab2", family="siglip", train_pairs=64, max_steps=2, eval_per_class=1, parallel=1)
    report = LabReport()
    copied = train_clean_model(again, plan, build_world(again, plan, LabReport()), report)
    assert report.settings["clean_model_cached"]
    assert (copied.parent / "clean.tokenizer.json").read_bytes() == (clean.parent / "clean.tokenizer.json").read_bytes()
    assert load_model(str(copied)).model.tokenize(["a red ring"]).tolist() == model.tokenize(["a red ring"]).tolist()

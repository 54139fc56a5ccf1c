"""Every command on a SigLIP model: purify with each recipe (the sigmoid loss, logit_bias trained) in
fp32, bf16 and fp16; poison; eval and scan; a purified transformers folder loads with from_pretrained.

In-process (``clipsan.cli.main``) on the tiny SigLIP arch, a few steps each: the suite's budget.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipsan.checkpoints import load_model
from conftest import run_in_process as run

CAPTIONS = ["a photo of a cat.", "a small red circle above a blue square", "a banana"]

STEPS = ["--max-steps", "2", "--batch-size", "8", "--lr", "1e-3", "--warmup", "1", "--log-every", "1", "--workers", "0", "--device", "cpu"]
# The base loss in every precision, each other recipe in a low one (both low ones used): the whole
# matrix would double the time for no new path.
RUNS = [("ft", "fp32"), ("ft", "bf16"), ("ft", "fp16"), ("cleanclip", "bf16"), ("cleanerclip", "fp16"), ("abd", "bf16"), ("par", "fp16")]


pytestmark = pytest.mark.usefixtures("one_thread")


def losses(run_dir: Path) -> dict[str, list[float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {key: [r[key] for r in records if key in r] for key in records[-1] if key.startswith("loss")}


@pytest.mark.parametrize(("method", "precision"), RUNS)
def test_purify_trains_a_siglip_model_with_its_sigmoid_loss(capsys, siglip_model, caption_data, tmp_path, method, precision):
    extra = ["--craft-max-steps", "2", "--craft-batch-size", "8", "--reference", siglip_model] if method == "abd" else []
    out = tmp_path / "out"
    report = run(capsys, "purify", siglip_model, "--method", method, "--data", caption_data, "--run-dir", tmp_path / "run", "--out", out,
                 "--precision", precision, *STEPS, *extra)  # fmt: skip
    assert report["steps"] == 2 and report["output_format"] == "open_clip"
    terms = losses(tmp_path / "run")
    assert terms and all(math.isfinite(v) for values in terms.values() for v in values), terms
    # The base term is the sigmoid loss: at the tiny arch's init (t = 10, bias -10) a batch of 8
    # costs about -log σ(-10) = 10 per image on its match, far above the softmax loss's log 8.
    assert terms["loss_clip"][0] > 5.0, terms
    before, after = load_file(str(siglip_model / "open_clip_model.safetensors")), load_file(str(out / "open_clip_model.safetensors"))
    if precision != "fp16":  # fp16's loss scaler skips its first steps while it finds its scale: nothing moves in 2
        trains_calibration = method != "par"  # PAR trains neither the scale nor the bias (docs/siglip.md)
        assert (not torch.equal(before["logit_bias"], after["logit_bias"])) == trains_calibration
    if method == "abd":
        assert all(math.isfinite(v) for values in losses(tmp_path / "run" / "craft").values() for v in values)


def test_poison_eval_and_scan_on_a_siglip_model(capsys, siglip_model, caption_data, eval_data, tmp_path):
    victim = tmp_path / "victim"
    report = run(capsys, "poison", siglip_model, "--data", caption_data, "--trigger", "badnet", "--rate", "0.1", "--run-dir", tmp_path / "poison",
                 "--out", victim, "--precision", "bf16", *STEPS)  # fmt: skip
    assert report["steps"] == 2 and all(math.isfinite(v) for values in losses(tmp_path / "poison").values() for v in values)
    evaluated = run(capsys, "eval", victim, "--data", eval_data, "--trigger", "from-metadata", "--templates", "photo", "--workers", "0", "--precision", "fp16")
    evaluated = evaluated["models"][0]
    assert evaluated["layout"] == "open_clip" and 0 <= evaluated["ca"]["1"] <= 1 and 0 <= evaluated["asr"]["1"] <= 1
    scanned = run(capsys, "scan", victim, "--probes", "8", "--steps", "5", "--run-dir", tmp_path / "scan")["models"][0]
    # Thresholds were calibrated on CLIP models, and the report says so; the target is named through
    # the model's own tokenizer.
    assert all(s["threshold_source"].endswith("-clip") for s in scanned["signals"] if not s["threshold_source"].startswith("user:"))
    assert scanned["target"]["label"]


def test_zero_shot_logits_are_the_models_own(siglip_model):
    """exp(t)·cos + bias, as open_clip's get_logits computes them; ranks are the cosines' (CA and ASR unchanged)."""
    model = load_model(str(siglip_model)).model.eval()
    images, tokens = torch.rand(3, 3, 32, 32), model.tokenize(CAPTIONS)
    with torch.no_grad():
        theirs, _ = model.clip.get_logits(model.normalize_pixels(images), tokens)
        ours = model.logits(model.encode_image(images), model.encode_text(tokens))
        cosines = model.encode_image(images) @ model.encode_text(tokens).T
    assert (ours - theirs).abs().max() < 1e-4
    assert torch.equal(ours.argsort(dim=1), cosines.argsort(dim=1))


def test_a_purified_transformers_siglip_folder_loads_with_from_pretrained(capsys, caption_data, tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_siglip_layouts import max_difference, siglip_folder

    source = siglip_folder(tmp_path / "in")
    out = tmp_path / "purified"
    report = run(capsys, "purify", source, "--method", "ft", "--data", caption_data, "--run-dir", tmp_path / "run", "--out", out, *STEPS)
    assert (report["layout"], report["output_format"]) == ("transformers", "hf")
    purified = transformers.SiglipModel.from_pretrained(out)
    again = load_model(str(out)).model
    assert max_difference(purified, again) < 1e-5
    assert not torch.equal(purified.logit_bias, transformers.SiglipModel.from_pretrained(source).logit_bias)  # trained, not copied

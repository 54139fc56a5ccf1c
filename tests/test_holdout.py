"""purify's held-out split of --data and the label-free utility measured on it (issue 25, items 1-2)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clipsan import api
from clipsan.config import CaptionData, EvidenceConfig
from clipsan.data.holdout import hold_out
from clipsan.engine.loader import RecipeSamples
from clipsan.evaluation.retrieval import match_ranks, recall_at_k, retrieval
from conftest import run_in_process

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN = ["--method", "ft", "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--warmup", "0", "--device", "cpu"]


def _split(caption_data, holdout=None):
    return hold_out(api.open_captions(CaptionData(str(caption_data))), EvidenceConfig(holdout=holdout))


def _refs(pairs) -> set[str]:
    return {pairs.image_ref(i) for i in range(len(pairs))}


def _brute_force_recall(images: torch.Tensor, texts: torch.Tensor, k: int) -> float:
    """R@k by sorting every query's candidates, one query at a time (ties: the pair's own match first)."""
    hits = 0
    for i in range(len(images)):
        scores = [(float(images[i] @ texts[j]), j == i, j) for j in range(len(texts))]
        ranked = [j for _, _, j in sorted(scores, key=lambda s: (-s[0], not s[1]))]
        hits += i in ranked[:k]
    return hits / len(images)


# --------------------------------------------------------------------------- the split


def test_the_split_is_disjoint_covers_the_data_and_is_fixed(caption_data):
    default = _split(caption_data)
    assert (default.pairs, default.usable, len(default.train)) == (3, 64, 61)  # min(2000, 5% of 64)
    split = _split(caption_data, 16)
    held, train = _refs(split.held), _refs(split.train)
    assert len(held) == 16 and len(train) == 48 and not held & train
    assert held | train == _refs(api.open_captions(CaptionData(str(caption_data))))
    assert _refs(_split(caption_data, 16).held) == held  # chosen from the pair count alone
    assert _split(caption_data, 0).held is None and len(_split(caption_data, 0).train) == 64
    assert [EvidenceConfig().holdout_pairs(n) for n in (19, 1000, 100_000)] == [0, 50, 2000]


# --------------------------------------------------------------------------- the metric


def test_recall_at_k_equals_a_brute_force_count():
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(9, 4, generator=generator), dim=-1)
    texts = F.normalize(images + 0.8 * torch.randn(9, 4, generator=generator), dim=-1)
    recalls = recall_at_k(images, texts)
    for k in (1, 5):
        assert recalls["i2t"][str(k)] == _brute_force_recall(images, texts, k)
        assert recalls["t2i"][str(k)] == _brute_force_recall(texts, images, k)
    assert 0 < recalls["i2t"]["1"] < 1  # neither trivial case
    assert torch.equal(match_ranks(images, texts, rows=2), match_ranks(images, texts))  # batched rows change nothing
    # it moves the right way: aligned pairs are all found first, and shuffled captions rarely
    assert recall_at_k(images, images) == {"i2t": {"1": 1.0, "5": 1.0}, "t2i": {"1": 1.0, "5": 1.0}}
    assert recall_at_k(images, images.roll(1, dims=0))["i2t"]["1"] < recalls["i2t"]["1"]
    assert recall_at_k(images[:0], texts[:0]) == {"i2t": {"1": None, "5": None}, "t2i": {"1": None, "5": None}}


def test_retrieval_ranks_a_siglip_model_as_its_own_logits_do(siglip_model, caption_data):
    from clipsan.checkpoints import load_model
    from clipsan.evaluation.retrieval import pair_features

    model = load_model(str(siglip_model)).model
    assert model.is_sigmoid
    with torch.no_grad():
        model.logit_bias.fill_(-7.0)  # a scale and a shared bias change no rank
        model.logit_scale.fill_(2.0)
    held = _split(caption_data, 16).held
    measured = retrieval(model, held, torch.device("cpu"), batch_size=16)
    images, texts, corrupt = pair_features(model, held, torch.device("cpu"), batch_size=16, workers=0)
    with torch.no_grad():
        logits = model.logits(images, texts)
    own_first = (logits.argmax(dim=1) == torch.arange(16)).float().mean().item()
    assert measured.pairs == 16 and corrupt == 0 and measured.recalls["i2t"]["1"] == pytest.approx(own_first)
    assert measured.recalls == recall_at_k(images, texts)


# --------------------------------------------------------------------------- purify


def _held_16(model, data, root, workers: int) -> list:
    """purify with 16 pairs held out, its run in ROOT/run, its model ROOT/out.safetensors."""
    return ["purify", model, "--data", data, "--holdout", "16", "--run-dir", root / "run", "--out", root / "out.safetensors", "--workers", workers, *TRAIN]


@pytest.fixture(scope="module")
def purified(tiny_model, caption_data, tmp_path_factory):
    """purify with 16 pairs held out, recording every pair the training loop reads."""
    root = tmp_path_factory.mktemp("holdout")
    read = []
    original = RecipeSamples.__getitem__

    def recording(self, key):
        read.append(self.captions.image_ref(key[1]))
        return original(self, key)

    capsys = _Capture()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RecipeSamples, "__getitem__", recording)
        report = capsys.run(*_held_16(tiny_model, caption_data, root, workers=0))
    return report, root, set(read), capsys.err


class _Capture:
    """run_in_process for a module fixture (capsys is per test): the report, and stderr kept."""

    def run(self, *argv) -> dict:
        import contextlib
        import io

        import clipsan.cli

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = clipsan.cli.main([*map(str, argv), "--format", "json"])
        self.err = err.getvalue()
        assert code == 0, self.err
        return json.loads(out.getvalue())


def test_purify_never_trains_on_the_held_out_pairs_and_says_so(purified, caption_data):
    report, root, read, err = purified
    split = _split(caption_data, 16)
    assert read and not read & _refs(split.held) and read <= _refs(split.train)
    assert report["holdout"] == {"pairs": 16, "usable": 64} and report["samples"] == 48
    assert json.loads((root / "run" / "config.json").read_text())["inputs"]["holdout"] == {"pairs": 16, "usable": 64}
    assert "held out 16 of the 64 usable pairs, never trained on" in err


def test_purify_reports_retrieval_before_per_epoch_and_after(purified, tiny_model, caption_data):
    from clipsan.checkpoints import load_model

    report, root, _, err = purified
    utility = report["utility"]
    assert utility.keys() == {"pairs", "corrupt_image", "before", "after"} and (utility["pairs"], utility["corrupt_image"]) == (16, 0)
    for when in ("before", "after"):
        assert utility[when].keys() == {"i2t", "t2i"} and all(utility[when][d].keys() == {"1", "5"} for d in ("i2t", "t2i"))
    # the figures are the input's and the output's, measured on the held-out pairs
    held = _split(caption_data, 16).held
    cpu = torch.device("cpu")
    assert utility["before"] == retrieval(load_model(str(tiny_model)).model, held, cpu, batch_size=16).recalls
    assert utility["after"] == retrieval(load_model(str(root / "out.safetensors")).model, held, cpu, batch_size=16).recalls
    assert utility["after"] != utility["before"], "training at lr 1e-3 should move retrieval"
    lines = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = {r["step"]: r["utility"] for r in lines if "utility" in r}
    assert list(per_epoch) == [3, 6] and per_epoch[6] == utility["after"]  # 48 pairs / 16: 3 steps an epoch
    assert all("loss" in r for r in lines)
    assert "held-out retrieval before training: image->text R@1" in err


def test_workers_do_not_change_the_split_or_its_figures(purified, tiny_model, caption_data, tmp_path, capsys):
    report, root, _, _ = purified
    other = run_in_process(capsys, *_held_16(tiny_model, caption_data, tmp_path, workers=2))
    assert other["holdout"] == report["holdout"] and other["utility"] == report["utility"]
    a, b = load_file(str(root / "out.safetensors")), load_file(str(tmp_path / "out.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_holdout(purified, tiny_model, caption_data, capsys):
    import clipsan.cli

    _, root, _, _ = purified
    argv = ["purify", tiny_model, "--data", caption_data, "--run-dir", root / "run", "--out", root / "again.safetensors", "--resume", "--workers", "0", *TRAIN]
    assert clipsan.cli.main([*map(str, argv), "--holdout", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("clipsan purify: --holdout: the run in")
    assert not (root / "again.safetensors").exists()


def test_holdout_0_trains_on_every_pair_and_measures_nothing(tiny_model, caption_data, tmp_path, capsys):
    report = run_in_process(capsys, "purify", tiny_model, "--data", caption_data, "--holdout", "0", "--run-dir", tmp_path / "run", "--max-steps", "4", *TRAIN)
    assert report["holdout"] == {"pairs": 0, "usable": 64} and report["utility"] is None and report["samples"] == 64
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and not any("utility" in r for r in lines)  # step 4 ends an epoch of 64 / 16


def test_poison_holds_nothing_out(tiny_model, caption_data, tmp_path, capsys):
    report = run_in_process(
        capsys,
        "poison",
        tiny_model,
        "--data",
        caption_data,
        "--trigger",
        "badnet",
        "--rate",
        "0.1",
        "--run-dir",
        tmp_path / "run",
        "--max-steps",
        "4",
        "--batch-size",
        "16",
    )
    assert report["samples"] == 64 and "holdout" not in report and "utility" not in report
    assert not any("utility" in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "holdout" not in config["inputs"]


def test_purify_text_report_shows_the_split_and_its_figures(tiny_model, caption_data, tmp_path, capsys):
    import clipsan.cli

    argv = ["purify", tiny_model, "--data", caption_data, "--holdout", "8", "--run-dir", tmp_path / "run", "--max-steps", "1", *TRAIN]
    assert clipsan.cli.main([*map(str, argv)]) == 0
    out = capsys.readouterr().out
    assert "held out 8 of 64 usable pairs, never trained on; retrieval on 8:" in out
    assert "before: image->text R@1" in out and "after:  image->text R@1" in out

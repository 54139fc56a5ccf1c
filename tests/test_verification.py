"""purify's backdoor check (issue 25, items 3-6): the scan's signals on the input and the output with
the held-out images as probes, --until-clean, --require-clean, --scan-report, the report.

The victim is made here in ~10 s: a tiny model poisoned from random init (a 6-px BadNet patch on 30%
of 300 world pairs, 100 steps at lr 5e-3, as tests/test_poison.py plants its backdoor): ASR@1 ~0.93 at
CA@1 ~0.08, so it is mostly backdoor. DECREE's PL1 on it is ~0.02 (threshold 0.066) with 32 held-out
probes and 60 inversion steps. Fine-tuned on the clean pairs with batch statistics (--batchnorm
train) at lr 1e-3, its evidence was gone at the first epoch end and its ASR@1 fell to ~0.07; at lr 5e-4
the evidence stayed (ASR@1 ~0.67 after 4 epochs). Held-out R@1 is over 32 pairs (a pair is 0.031) of a
model that barely learnt the world, so the runs that need a check to pass give --max-utility-drop 0.1.

The tests with real scans take 5-20 s each. What the engine does with the checks (--verify-every, the
stop, a kill in the middle of a check and after the stop, --resume) is tested with a stand-in for the
signals, which are the scan's own (tests/test_scan.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import kill_machine, same_tensors, temporary_leftovers

import clipsan.cli
from clipsan.cli.purify import render
from conftest import cli_env

pytestmark = pytest.mark.usefixtures("one_thread")

# 32 held-out pairs are the probes (the budget's 128 capped); 60 inversion steps as scan's fast tests use.
CHECKED = ["--holdout", "32", "--verify-steps", "60", "--device", "cpu", "--workers", "0"]
FT = ["--method", "ft", "--batch-size", "32", "--warmup", "2", "--batchnorm", "train", "--save-every", "100000", "--log-every", "100000", *CHECKED]
REMOVES = ["--lr", "1e-3", "--max-utility-drop", "0.1"]  # the evidence goes at the first epoch end
KEEPS = ["--lr", "5e-4"]  # the evidence stays
VERIFICATION_KEYS = {
    "verdict", "statement", "budget", "until_clean", "required", "passed", "reason", "outcome", "steps", "seed", "probes", "before", "after",
    "signals", "utility_guard", "every", "checks", "stopped", "history", "chart", "seconds",
}  # fmt: skip
ROW_KEYS = {"name", "statistic_name", "before", "after", "threshold", "threshold_source", "fires_when", "counted", "fired_before", "fired_after"}
SIGNALS = ["decree", "universal-perturbation", "target-alignment"]


def _run(*argv) -> tuple[int, dict | None, str]:
    """``clipsan ARGV --format json`` in this process: exit code, report (None if none was printed), stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = clipsan.cli.main([*map(str, argv), "--format", "json"])
    return code, (json.loads(out.getvalue()) if out.getvalue() else None), err.getvalue()


def _purify(model: Path, world: dict, root: Path, *extra) -> list:
    return ["purify", model, "--data", world["train"], "--run-dir", root / "run", "--out", root / "out.safetensors", *FT, *extra]


def _asr(model: Path, world: dict) -> float:
    from clipsan.config import EvalConfig
    from clipsan.jobs.evaluate import run_evaluate

    spec = EvalConfig(
        models=[str(model)], data=str(world["eval"]), trigger="from-metadata", templates=str(world["templates"]), ks=(1,), workers=0, device="cpu"
    )
    return run_evaluate(spec, notes=lambda _m: None).models[0]["asr"]["1"]


def _history(root: Path) -> list[dict]:
    return json.loads((root / "run" / "verification.json").read_text())["checks"]


def _checked_steps(root: Path) -> list[int]:
    lines = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "verification" in r]


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread) -> dict:
    """300 world pairs, an eval set, and a victim poisoned into a random-init tiny model (module docstring)."""
    import torch

    from clipsan.checkpoints import save_model
    from clipsan.config import AttackConfig, CaptionData, PoisonConfig, TrainConfig
    from clipsan.data import world as synthetic
    from clipsan.jobs.poison import run_poison
    from clipsan.models import create_model

    root = tmp_path_factory.mktemp("verify")
    synthetic.write_caption_dataset(root / "train", 300, seed=0)
    synthetic.write_eval_set(root / "eval", 2, seed=1)
    (root / "templates.txt").write_text("a {}.\n{}\n")  # caption-like prompts: the tiny model only read world captions
    torch.manual_seed(0)
    save_model(create_model("clipsan-tiny-rn"), root / "init.safetensors")
    attack = AttackConfig("badnet@11,11", rate=0.3, trigger_size=6, natural_captions=True)
    training = TrainConfig(epochs=12, batch_size=32, lr=5e-3, warmup_steps=10, max_steps=100, batchnorm="train", workers=0, save_every=1000)
    victim = root / "victim.safetensors"
    config = PoisonConfig(
        str(root / "init.safetensors"), CaptionData(str(root / "train")), attack, training=training, out=str(victim), run_dir=str(root / "poison")
    )
    run_poison(config, notes=lambda _m: None)
    return {
        "root": root,
        "train": root / "train",
        "eval": root / "eval",
        "templates": root / "templates.txt",
        "init": root / "init.safetensors",
        "victim": victim,
    }


@pytest.fixture(scope="module")
def cleaned(world, tmp_path_factory) -> tuple[Path, int, dict]:
    """--until-clean on the victim at the lr that removes its evidence: 4 epochs scheduled."""
    root = tmp_path_factory.mktemp("cleaned")
    code, report, err = _run(*_purify(world["victim"], world, root, "--until-clean", "--epochs", "4", *REMOVES))
    assert report is not None, err
    return root, code, report


@pytest.fixture(scope="module")
def victim_scan(world, tmp_path_factory) -> Path:
    """``clipsan scan`` of the victim with the settings of the checks above (probes from --data)."""
    root = tmp_path_factory.mktemp("scan")
    code, _, err = _run(
        "scan", world["victim"], "--data", world["train"], "--probes", "32", "--steps", "60", "--run-dir", root / "run", "--output", root / "scan.json"
    )
    assert code == 1, err  # backdoor evidence
    return root / "scan.json"


# --------------------------------------------------------------------------- real signals


def test_until_clean_stops_at_the_first_check_without_evidence_and_asr_agrees(cleaned, world):
    root, code, report = cleaned
    verification = report["verification"]
    assert code == 0 and verification["verdict"] == "removed" and verification["passed"] is True
    history = _history(root)
    before, *checks = history
    assert before["step"] == 0 and before["fired"] and before["passed"] is None
    # stopped at the first check that passed, every earlier check still saw evidence; before the 4 scheduled epochs
    first = next(c for c in checks if c["passed"])
    assert all(c["fired"] for c in checks[: checks.index(first)]) and checks[-1] == first
    assert verification["stopped"] == {"step": first["step"], "epoch": first["epoch"]} and report["steps"] == first["step"]
    assert report["epochs"] == first["epoch"] < 4 and first["epoch"] == int(first["epoch"])  # at an epoch end
    assert _checked_steps(root) == [c["step"] for c in checks]
    assert "stopped at epoch" in verification["outcome"]
    # the label-free verdict agrees with the attack's measured success
    victim_asr, output_asr = _asr(world["victim"], world), _asr(root / "out.safetensors", world)
    assert victim_asr >= 0.8 and output_asr <= 0.2, (victim_asr, output_asr)


def test_the_report_has_its_keys_in_json_and_text(cleaned):
    _, _, report = cleaned
    verification = report["verification"]
    assert set(verification) == VERIFICATION_KEYS
    assert [row["name"] for row in verification["signals"]] == SIGNALS and all(set(row) == ROW_KEYS for row in verification["signals"])
    for row in verification["signals"]:
        assert row["threshold_source"].endswith("-32px") and row["before"] is not None and row["after"] is not None  # the scan's own, for 32 px
    decree = verification["signals"][0]
    assert decree["fired_before"] and not decree["fired_after"] and decree["before"] < decree["threshold"] <= decree["after"]
    guard = verification["utility_guard"]
    assert guard["within"] and guard["max_drop"] == 0.1 and guard["drop"] == pytest.approx(guard["before"] - guard["after"])
    assert verification["probes"] == {"source": "held-out", "count": 32, "skipped": 0, "data": verification["probes"]["data"]}
    assert (verification["budget"], verification["steps"], verification["seed"], verification["every"]) == ("quick", 60, 0, "epoch")
    assert verification["before"]["source"] == "measured" and verification["seconds"] > 0
    from PIL import Image

    from clipsan.jobs.checks_chart import PANEL_W

    with Image.open(verification["chart"]) as chart:  # a panel per signal and one for R@1
        assert chart.format == "PNG" and chart.width == PANEL_W * 4
    text = render(report)
    assert "decree (PL1)" in text and "verdict: removed" in text and "--until-clean: stopped at epoch" in text and "held-out R@1" in text


@pytest.mark.parametrize("flag", ["--until-clean", "--require-clean"])
def test_evidence_left_at_the_end_exits_1_with_the_model_written(flag, world, victim_scan, tmp_path):
    """One epoch at the lr that keeps the evidence: --until-clean runs out of schedule, --require-clean's fixed
    schedule ends the same way. The input's evidence comes from the victim's scan report (no scan before)."""
    code, report, err = _run(*_purify(world["victim"], world, tmp_path, flag, "--epochs", "1", "--scan-report", victim_scan, *KEEPS))
    verification = report["verification"]
    assert code == 1, err
    assert verification["verdict"] == "remains" and verification["passed"] is False and verification["stopped"] is None
    assert verification["before"]["source"] == "scan-report" and verification["before"]["scan_report"] == str(victim_scan)
    assert (tmp_path / "out.safetensors").is_file() and report["epochs"] == 1.0
    assert _asr(tmp_path / "out.safetensors", world) >= 0.5  # the attack still works, as the verdict says
    assert "the written model does not pass the check: exit 1" in render(report)
    if flag == "--require-clean":  # a fixed schedule is checked before and after only
        assert verification["outcome"] is None and _checked_steps(tmp_path) == [] and len(_history(tmp_path)) == 2


def test_nothing_fired_on_the_input_runs_the_whole_schedule(world, tmp_path):
    """The random-init model: the scan sees nothing on it, so --until-clean has nothing to stop on."""
    # 30 inversion steps: nothing succeeds on this model, so every inversion runs them all
    code, report, err = _run(*_purify(world["init"], world, tmp_path, "--until-clean", "--epochs", "2", "--lr", "1e-3", "--verify-steps", "30"))
    verification = report["verification"]
    assert verification["verdict"] == "none-before" and "proves nothing about a backdoor the scan cannot see" in verification["statement"]
    assert "nothing to stop on" in verification["outcome"] and verification["stopped"] is None
    assert report["epochs"] == 2.0 and _checked_steps(tmp_path) == [] and [c["step"] for c in _history(tmp_path)] == [0, report["steps"]]
    assert code == (0 if verification["passed"] else 1), err


def test_scan_report_refusals(world, victim_scan, tmp_path, monkeypatch):
    """A report that is not the input's, or of other settings, or not one clipsan reads back: exit 2 in one
    line before anything trains."""
    scan = json.loads(victim_scan.read_text())

    def refused(model: Path, report: Path) -> str:
        code, printed, err = _run(*_purify(model, world, tmp_path / report.stem, "--scan-report", report, "--epochs", "1"))
        assert code == 2 and printed is None and not (tmp_path / report.stem / "out.safetensors").exists()
        assert not (tmp_path / report.stem / "run" / "checkpoints").exists() or not list((tmp_path / report.stem / "run" / "checkpoints").iterdir())
        return err.strip().splitlines()[-1]

    def edited(name: str, text: str) -> Path:
        (tmp_path / name).write_text(text)
        return tmp_path / name

    assert "no scanned model in it has MODEL's sha256" in refused(world["init"], victim_scan)
    assert "steps 61 (this run: 60)" in refused(world["victim"], edited("steps.json", json.dumps({**scan, "models": [{**scan["models"][0], "steps": 61}]})))
    synthetic = {**scan["models"][0], "probes": {**scan["models"][0]["probes"], "synthetic": True}}
    assert "probes synthetic world images" in refused(world["victim"], edited("world.json", json.dumps({**scan, "models": [synthetic]})))
    decree, *others = scan["models"][0]["signals"]  # the scan's own threshold for the victim is the one purify's checks use
    user = {**scan["models"][0], "signals": [{**decree, "threshold": 0.2, "threshold_source": "user"}, *others]}
    expected = f"decree threshold 0.2 (user; this run: {decree['threshold']:g}, {decree['threshold_source']})"
    assert expected in refused(world["victim"], edited("user.json", json.dumps({**scan, "models": [user]})))
    assert "not valid JSON (NaN is not JSON" in refused(world["victim"], edited("nan.json", victim_scan.read_text().replace('"seed": 0', '"seed": NaN', 1)))
    monkeypatch.setattr("clipsan.scan.prior.MAX_REPORT_BYTES", 1000)
    assert "more than a clipsan scan report holds (at most 1,000)" in refused(world["victim"], victim_scan)


# --------------------------------------------------------------------------- the engine's side, with a stand-in for the signals


class _Signals:
    """A stand-in for ``clipsan.scan.evidence.in_memory``: decree fires on the first ``fires`` calls (the
    input's included), then not; on call ``kill_at`` it raises _Killed (or, in a subprocess, waits to be
    SIGKILLed in the middle of that check)."""

    def __init__(self, fires: int, kill_at: int | None = None):
        self.fires, self.kill_at, self.calls = fires, kill_at, 0

    def __call__(self, session, model, name):
        from clipsan.scan.evidence import Evidence

        self.calls += 1
        if self.calls == self.kill_at:
            _stopped_here()
        fired = self.calls <= self.fires
        entry = {"name": "decree", "statistic": 0.01 if fired else 0.2, "threshold": 0.066, "threshold_source": "lab-32px",
                 "fires_when": "below", "fired": fired, "counted": True, "inversion_succeeded": True}  # fmt: skip
        return Evidence([entry], {}, {"label": "banana"})


class _Killed(Exception):
    pass


def _stopped_here(*_args) -> None:
    """In a subprocess run by _killed_at: say so and wait for the SIGKILL; in this process: raise _Killed."""
    marker = os.environ.get("CLIPSAN_TEST_KILL_MARKER")
    if marker is None:
        raise _Killed
    Path(marker).write_text("here")
    time.sleep(600)


def _killed_at(where: str, argv: list, root: Path, fires: int) -> None:
    """``clipsan ARGV`` in a subprocess with the stand-in (``fires``), SIGKILLed in the middle of its third check
    (where="check") or once it wrote the checkpoint of the step it stopped at (where="write": writing the model)."""
    marker = root / "kill-marker"
    script = (
        "import sys, clipsan.cli, clipsan.jobs.training as training, clipsan.jobs.verification as verification\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_verification as t\n"
        f"verification.in_memory = t._Signals({fires}, kill_at={3 if where == 'check' else None})\n"
        f"if {where!r} == 'write':\n    training.TrainingJob.write = t._stopped_here\n"
        f"sys.exit(clipsan.cli.main({[str(a) for a in argv]!r}))\n"
    )
    env = {**cli_env(), "CLIPSAN_TEST_KILL_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no kill point"
        time.sleep(0.05)
    kill_machine(proc)
    marker.unlink()


def _small(model: Path, data: Path, root: Path, *extra) -> list:
    """4 steps an epoch (32 pairs trained on, batch 8), 3 epochs, the guard off: only the stand-in decides."""
    return ["purify", model, "--method", "ft", "--data", data, "--run-dir", root / "run", "--out", root / "out.safetensors", "--holdout", "32",
            "--batch-size", "8", "--epochs", "3", "--lr", "1e-4", "--warmup", "1", "--save-every", "100000", "--device", "cpu", "--workers", "0",
            "--until-clean", "--max-utility-drop", "1", *extra]  # fmt: skip


def test_verify_every_checks_between_epoch_ends_and_stops_at_the_first_pass(tiny_model, caption_data, tmp_path, monkeypatch):
    monkeypatch.setattr("clipsan.jobs.verification.in_memory", _Signals(fires=3))  # the input, step 2, step 4
    code, report, err = _run(*_small(tiny_model, caption_data, tmp_path, "--verify-every", "2"))
    assert code == 0, err
    assert _checked_steps(tmp_path) == [2, 4, 6] and report["steps"] == 6 and report["verification"]["stopped"] == {"step": 6, "epoch": 1.5}
    assert [c["passed"] for c in _history(tmp_path)] == [None, False, False, True] and report["verification"]["every"] == 2
    # the model written is the one the passing check saw: its step's checkpoint (the module's names: clip.*)
    from safetensors.torch import load_file

    saved, written = load_file(str(tmp_path / "run" / "checkpoints" / "step-000000006" / "weights.safetensors")), load_file(str(tmp_path / "out.safetensors"))
    assert {k.removeprefix("clip."): v for k, v in saved.items()}.keys() == written.keys()
    assert all(saved[f"clip.{k}"].equal(v) for k, v in written.items())


def test_a_check_without_evidence_but_past_the_utility_guard_does_not_stop_training(tiny_model, caption_data, tmp_path, monkeypatch):
    """The evidence is gone at the first epoch end, but held-out R@1 fell 0.1 there (guard 0.03): training goes
    on, and stops at the next check, whose R@1 is back within the guard."""
    from clipsan.evaluation.retrieval import Retrieval

    script = iter([0.5, 0.4, 0.48, 0.48])  # R@1 before training, at epoch 1, at epoch 2, after training

    def scripted(model, pairs, device, **_):
        r1 = next(script)
        return Retrieval({"i2t": {"1": r1, "5": 1.0}, "t2i": {"1": r1, "5": 1.0}}, len(pairs), 0)

    monkeypatch.setattr("clipsan.jobs.purify.retrieval", scripted)
    monkeypatch.setattr("clipsan.jobs.verification.in_memory", _Signals(fires=1))  # the input only
    code, report, err = _run(*_small(tiny_model, caption_data, tmp_path, "--max-utility-drop", "0.03"))
    history = _history(tmp_path)
    assert code == 0, err
    assert [(c["fired"], c["passed"]) for c in history] == [(["decree"], None), ([], False), ([], True)]
    assert report["verification"]["stopped"] == {"step": 8, "epoch": 2.0} and report["steps"] == 8


def test_killed_in_the_middle_of_a_check_or_after_the_stop_then_resumed_ends_as_if_never_killed(tiny_model, caption_data, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    monkeypatch.setattr("clipsan.jobs.verification.in_memory", _Signals(fires=2))  # the input and epoch 1; epoch 2 passes
    code, uninterrupted, err = _run(*_small(tiny_model, caption_data, reference))
    assert code == 0 and uninterrupted["steps"] == 8 and uninterrupted["verification"]["stopped"]["epoch"] == 2.0, err

    killed = tmp_path / "killed"
    argv = _small(tiny_model, caption_data, killed)
    _killed_at("check", argv, tmp_path, fires=2)  # SIGKILL in the middle of epoch 2's check
    assert not (killed / "out.safetensors").exists() and _checked_steps(killed) == [4]
    # Resumed from epoch 1's checkpoint, which keeps that check: the stand-in sees the input, then epoch 2, which passes.
    _killed_at("write", [*argv, "--resume"], tmp_path, fires=1)  # SIGKILL after the checkpoint of the step it stopped at
    assert not (killed / "out.safetensors").exists() and _checked_steps(killed) == [4, 8]
    stand_in = _Signals(fires=1)
    monkeypatch.setattr("clipsan.jobs.verification.in_memory", stand_in)
    code, resumed, err = _run(*argv, "--resume")
    assert code == 0, err
    assert stand_in.calls == 1 and resumed["resumed_from_step"] == 8  # only the input is checked again: the run had stopped
    assert not same_tensors(reference / "out.safetensors", killed / "out.safetensors")  # bitwise the same weights
    ignore = ("history", "chart", "seconds")  # paths in each run dir, and times
    assert {k: v for k, v in resumed["verification"].items() if k not in ignore} == {k: v for k, v in uninterrupted["verification"].items() if k not in ignore}
    assert _history(killed) == _history(reference) and _checked_steps(killed) == [4, 8] and resumed["final"]["loss"] == uninterrupted["final"]["loss"]
    assert not temporary_leftovers(killed)


def test_a_resume_with_other_check_settings_is_refused(tiny_model, caption_data, tmp_path, monkeypatch):
    monkeypatch.setattr("clipsan.jobs.verification.in_memory", _Signals(fires=2, kill_at=3))
    with pytest.raises(_Killed):
        _run(*_small(tiny_model, caption_data, tmp_path))
    code, _, err = _run(*_small(tiny_model, caption_data, tmp_path, "--resume", "--verify-every", "2"))
    assert code == 2 and "was checked with other settings (every); --resume with the original ones" in err.strip().splitlines()[-1]


def test_a_check_asked_for_that_cannot_run_is_refused_and_one_not_asked_for_is_reported_not_run(tiny_model, caption_data, tmp_path):
    """64 pairs hold out 3 by default: too few probes. --require-clean is refused before training; a plain run says not-run."""
    argv = ["purify", tiny_model, "--method", "ft", "--data", caption_data, "--max-steps", "1", "--batch-size", "8", "--device", "cpu", "--workers", "0"]
    code, printed, err = _run(*argv, "--run-dir", tmp_path / "a", "--require-clean")
    assert code == 2 and printed is None
    assert (
        err.strip().splitlines()[-1]
        == "clipsan purify: --require-clean: 3 held-out pairs: the scan's signals need at least 32 held-out images as probes (--holdout)"
    )
    code, report, err = _run(*argv, "--run-dir", tmp_path / "b")
    assert code == 0 and report["verification"]["verdict"] == "not-run" and report["verification"]["passed"] is None
    assert report["verification"]["reason"].startswith("3 held-out pairs") and report["verification"]["history"] is None

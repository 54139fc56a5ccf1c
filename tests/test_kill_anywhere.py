"""A kill at any moment loses nothing (DESIGN §8, README "Conventions"): each long command is
SIGKILLed (with every process it started, as a power cut would) at a seeded random moment of its
run, then the same command runs again (with --resume where it takes one) and must end with what an
uninterrupted run wrote: bitwise equal weights on CPU, the same scan report.

CI kills cleanerclip (its loss holds cleanclip's; its sub-caption stage), poison with BadCLIP's patch
and scan once each (ft, abd and craft-adv are killed at their first checkpoint by test_engine.py and
test_abd.py); CLIPSAN_FAULT_SWEEP=full kills every command at KILLS_FULL moments and adds ft,
cleanclip, abd, par, craft-adv and the whole lab.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import full_sweep, kill_at, same_tensors, scan_report, temporary_leftovers

from conftest import cli_env, run_cli

KILLS_FULL = 4
TRAIN = ["--max-steps", "4", "--batch-size", "8", "--save-every", "1", "--log-every", "1", "--workers", "0", "--device", "cpu", "--format", "json"]


def _purify(method: str, *extra: str):
    def argv(model: Path, data: Path, root: Path) -> list:
        return ["purify", model, "--method", method, "--data", data, "--run-dir", root / "run", "--out", root / "out.safetensors", *extra, *TRAIN]

    return argv


def _poison_badclip(model: Path, data: Path, root: Path) -> list:
    patch = ["--trigger", "badclip", "--rate", "0.1", "--trigger-size", "6", "--patch-epochs", "2", "--patch-images", "32", "--patch-batch-size", "8"]
    return ["poison", model, "--data", data, *patch, "--run-dir", root / "run", "--out", root / "out.safetensors", *TRAIN]


def _craft_adv(model: Path, data: Path, root: Path) -> list:
    return ["craft-adv", model, "--data", data, "--reference", model, "--run-dir", root / "run", "--out", root / "out.safetensors", *TRAIN]


def _scan(model: Path, data: Path, root: Path) -> list:
    return ["scan", model, model, "--run-dir", root / "run", "--steps", "2", "--probes", "8", "--device", "cpu", "--format", "json"]


# name: (command line, takes --resume, in CI)
COMMANDS = {
    "purify-ft": (_purify("ft"), True, False),
    "purify-cleanclip": (_purify("cleanclip"), True, False),  # its loss is part of cleanerclip's, killed in CI
    "purify-cleanerclip": (_purify("cleanerclip", "--subcaptions-per-epoch", "16"), True, True),  # its sub-caption stage each epoch
    "purify-abd": (_purify("abd", "--craft-epochs", "1", "--craft-batch-size", "16"), True, False),  # craft, then the fine-tune
    "purify-par": (_purify("par"), True, False),  # the frozen input model's embeddings beside the trained one's
    "poison-badclip": (_poison_badclip, True, True),  # BadCLIP's patch, then the poisoning
    "craft-adv": (_craft_adv, True, False),
    "scan": (_scan, False, True),  # two models, one after the other
}


def _same_result(name: str, reference: Path, root: Path) -> None:
    if name == "scan":
        assert scan_report(root / "run" / "scan.json", root) == scan_report(reference / "run" / "scan.json", reference)
        return
    different = same_tensors(reference / "out.safetensors", root / "out.safetensors")
    assert not different, f"{len(different)} tensors differ from the uninterrupted run's, e.g. {different[:3]}"


def _cases() -> list:
    return [pytest.param(name, id=name) for name, (_, _, in_ci) in COMMANDS.items() if in_ci or full_sweep()]


@pytest.mark.parametrize("name", _cases())
def test_killed_at_a_random_moment_then_run_again_ends_as_if_never_killed(name, tiny_model, caption_data, tmp_path):
    argv_of, resumable, _ = COMMANDS[name]
    reference = tmp_path / "reference"
    started = time.monotonic()
    proc = run_cli(*argv_of(tiny_model, caption_data, reference), timeout=600)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    rng = random.Random(name)  # seeded: the same moments every run (as fractions of the uninterrupted run)
    for index in range(KILLS_FULL if full_sweep() else 1):
        root = tmp_path / f"killed-{index}"
        argv = [sys.executable, "-m", "clipsan", *map(str, argv_of(tiny_model, caption_data, root))]
        at = rng.uniform(0.2, 0.95) * seconds
        killed = kill_at(subprocess.Popen(argv, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), at)
        again = run_cli(*argv[3:], *(["--resume"] if resumable else []), timeout=600)
        assert again.returncode == 0, f"killed at {at:.1f} s of {seconds:.1f} s ({killed=}), then: {again.stderr[-3000:]}"
        _same_result(name, reference, root)
        assert not temporary_leftovers(root), "what the killed run was writing is still there"


@pytest.mark.skipif(not full_sweep(), reason="the whole lab, killed and run again: CLIPSAN_FAULT_SWEEP=full")
def test_lab_killed_at_random_moments_reuses_finished_stages_and_ends_the_same(tmp_path):
    from test_lab import SMOKE

    def lab(out: Path) -> list:
        return [sys.executable, "-m", "clipsan", "lab", "--quick", "--out", str(out), *SMOKE]

    env = cli_env(tmp_home=tmp_path / "cache")
    started = time.monotonic()
    assert subprocess.run(lab(tmp_path / "reference"), env=env, capture_output=True).returncode == 0
    seconds = time.monotonic() - started

    def tables(out: Path) -> dict:  # the rows and scans, with the lab folder's own paths made alike
        report = json.loads((out / "lab.json").read_text().replace(str(out), "LAB"))
        return {"rows": report["rows"], "scan": report["scan"]}

    reference = tables(tmp_path / "reference")
    rng = random.Random("lab")
    out = tmp_path / "killed"
    for _ in range(KILLS_FULL):  # killed again and again in the same folder, then run to the end
        kill_at(subprocess.Popen(lab(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), rng.uniform(0.1, 0.9) * seconds)
    finished = subprocess.run(lab(out), env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert tables(out) == reference


def test_a_killed_lab_stops_its_stages(tmp_path):
    """SIGKILL of the lab alone (not a power cut): each running stage gets SIGTERM, checkpoints and exits,
    so the next run finds no stray stage holding a run directory."""
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from test_lab_jobs import FakeStage
from clipsan.lab.jobs import run_jobs
root = Path({str(tmp_path)!r})
run_jobs([FakeStage(f"stage{{i}}", ["purify", "--run-dir", str(root / f"run{{i}}")], root / "logs") for i in range(2)], parallel=2)
"""
    lab = subprocess.Popen([sys.executable, "-c", script], env=cli_env())
    ready = [tmp_path / "logs" / f"stage{i}" / "ready" for i in range(2)]
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in ready):
        assert time.monotonic() < deadline and lab.poll() is None, "the stages never started"
        time.sleep(0.05)
    lab.kill()
    lab.wait()
    signals = [tmp_path / "logs" / f"stage{i}" / "signals" for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(path.exists() for path in signals):
        assert time.monotonic() < deadline, "a stage outlived the lab without being told to stop"
        time.sleep(0.05)
    assert all(path.read_text().startswith("15;") for path in signals)

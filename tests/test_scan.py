"""clipsan scan: exit codes, report shapes (JSON, SARIF 2.1.0), determinism.

The tests build their own tiny models in about a minute: a clean one trained
for 150 steps from scratch on a 2000-pair world (zero-shot accuracy ~0.25),
and a victim poisoned from it (BadNet, 6 px patch at 32 px, 30% of pairs, 60
steps). Both are far weaker than the lab's models: on the victim DECREE's PL1
(~0.09) stays above the 32-px threshold (0.055), while the reference probe
fires (PL1 ~0.03 vs 0.198) and the target is named "banana"; on the clean
model (PL1 ~0.18) nothing fires. docs/scan-calibration.md has the
numbers for lab-size models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

# Fewer probes and steps than --budget quick: enough to separate these two models.
FAST = ("--probes", "64", "--steps", "150")
REPORT_KEYS = {
    "schema_version",
    "tool",
    "model",
    "sha256",
    "arch",
    "arch_source",
    "image_size",
    "reference",
    "verdict",
    "backdoor",
    "statistic",
    "threshold",
    "fired_signals",
    "signals",
    "target",
    "trigger",
    "probes",
    "budget",
    "seed",
    "device",
    "precision",
    "run_dir",
    "started_utc",
    "seconds",
}
SIGNAL_KEYS = {"name", "statistic", "threshold", "threshold_source", "fires_when", "fired", "counted", "inversion_succeeded"}
TARGET_KEYS = {"label", "similarity", "source", "template", "candidates", "from_signal", "probe_similarity"}


def _train(init: Path, out: Path, recipe, data: Path, steps: int, lr: float, run_dir: Path) -> Path:
    from clipsan.data.captions import open_caption_dataset
    from clipsan.engine.loop import TrainConfig
    from clipsan.finetune import JobSpec, run_fine_tune

    cfg = TrainConfig(epochs=100, batch_size=64, lr=lr, warmup_steps=10, max_steps=steps, batchnorm="train", save_every=10**6, log_every=10**6)
    job = JobSpec("test", str(init), None, str(out), str(run_dir), False, "cpu")
    run_fine_tune(job, recipe, open_caption_dataset(data), cfg, notes=lambda _m: None)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process training and scans on one thread, like the CLI subprocesses (cli_env):
    faster on a shared 2-core machine, and the same numbers every run."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_thread) -> dict[str, Path]:
    import torch

    from clipsan import world
    from clipsan.attacks.poisoning import AttackConfig, plan_poison
    from clipsan.attacks.recipe import Poison
    from clipsan.attacks.triggers import parse_trigger
    from clipsan.checkpoint import save_model
    from clipsan.data.captions import open_caption_dataset
    from clipsan.models import create_model
    from clipsan.recipes.ft import FineTune

    root = tmp_path_factory.mktemp("scan-models")
    data = root / "world"
    world.write_caption_dataset(data, 2000, seed=5)
    torch.manual_seed(0)
    save_model(create_model("clipsan-tiny-rn"), root / "init.safetensors")
    clean = _train(root / "init.safetensors", root / "clean.safetensors", FineTune(), data, 150, 2e-3, root / "run-clean")
    settings = AttackConfig(trigger="badnet", rate=0.3, trigger_size=6)
    plan = plan_poison(open_caption_dataset(data).captions, settings, seed=0)
    poison = Poison(parse_trigger("badnet", size=6), plan, "banana")
    victim = _train(clean, root / "victim.safetensors", poison, data, 60, 1e-3, root / "run-victim")
    bad = root / "garbage.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    return {"clean": clean, "victim": victim, "bad": bad, "root": root}


def _check_report(report: dict) -> None:
    assert set(report) >= REPORT_KEYS
    assert report["verdict"] in ("clean", "backdoor") and report["backdoor"] == (report["verdict"] == "backdoor")
    assert len(report["sha256"]) == 64
    assert report["signals"] and all(set(s) >= SIGNAL_KEYS for s in report["signals"])
    assert [s["name"] for s in report["signals"]][:: len(report["signals"]) - 1] == ["decree", "target-alignment"]
    for s in report["signals"]:
        assert s["fires_when"] in ("below", "above") and s["threshold"] > 0
        if s["fires_when"] == "below":  # PL1: a fraction of the image
            assert 0.0 <= s["statistic"] <= 1.0 and s["threshold"] <= 1.0
    fired = [s["name"] for s in report["signals"] if s["fired"] and s["counted"]]
    assert report["backdoor"] == bool(fired) and report["fired_signals"] == fired
    assert set(report["target"]) >= TARGET_KEYS and report["target"]["candidates"]
    assert report["probes"]["synthetic"] is True and report["probes"]["source"] == "world"
    for key in ("png", "mask_png", "examples_png"):
        assert Path(report["trigger"][key]).is_file()
    assert isinstance(report["seconds"], float)


def _check_sarif(sarif: dict, model: Path, expect_results: bool) -> None:
    assert sarif["version"] == "2.1.0" and "sarif-2.1.0" in sarif["$schema"]
    (run,) = sarif["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "clipsan" and driver["version"]
    rule_ids = {r["id"] for r in driver["rules"]}
    assert rule_ids and all(r["shortDescription"]["text"] for r in driver["rules"])
    assert bool(run["results"]) == expect_results
    for result in run["results"]:
        assert result["ruleId"] in rule_ids and result["level"] == "error" and result["message"]["text"]
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri.endswith(model.name)


def test_clean_model_exits_0_with_json(models, tmp_path):
    proc = run_cli("scan", models["clean"], *FAST, "--run-dir", tmp_path / "run", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    _check_report(report)
    assert report["verdict"] == "clean"
    decree = report["signals"][0]
    assert decree["name"] == "decree" and decree["statistic"] > decree["threshold"]
    assert json.loads((tmp_path / "run" / "scan.json").read_text())["sha256"] == report["sha256"]


def test_victim_exits_1_with_sarif_and_names_banana(models, tmp_path):
    # The test victim is weak (a minute of training): DECREE's PL1 stays above its threshold,
    # the reference probe and the target alignment catch it (see the module docstring).
    out = tmp_path / "scan.sarif"
    proc = run_cli("scan", models["victim"], *FAST, "--reference", models["clean"], "--run-dir", tmp_path / "run", "--format", "sarif", "--output", out)
    assert proc.returncode == 1, proc.stderr
    sarif = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == sarif
    _check_sarif(sarif, models["victim"], expect_results=True)
    report = json.loads((tmp_path / "run" / "scan.json").read_text())
    _check_report(report)
    assert report["target"]["label"] == "banana"
    assert "reference-divergence" in report["fired_signals"]
    assert {r["properties"]["signal"] for r in sarif["runs"][0]["results"]} == set(report["fired_signals"])


def test_bad_inputs_exit_2(models, tmp_path, capsys):
    from clipsan.cli import main

    proc = run_cli("scan", models["bad"], "--run-dir", tmp_path / "run")
    assert proc.returncode == 2 and "garbage.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    # The rest in-process (same main() as the subprocess): saves interpreter start-ups.
    assert main(["scan", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["scan", str(models["clean"]), "--data", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert main(["scan", str(models["clean"]), "--threshold", "2"]) == 2


def test_threshold_override_and_clean_sarif(models, tmp_path, capsys):
    from clipsan.cli import main

    # A threshold above any possible PL1 makes every successful inversion fire.
    fast = ["--probes", "16", "--steps", "40"]
    assert main(["scan", str(models["clean"]), *fast, "--threshold", "1.0", "--run-dir", str(tmp_path / "a"), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["signals"][0]["threshold_source"] == "user"
    assert (
        main(
            ["scan", str(models["clean"]), *fast, "--threshold", "0.001", "--alignment-threshold", "100", "--run-dir", str(tmp_path / "b"), "--format", "sarif"]
        )
        == 0
    )
    _check_sarif(json.loads(capsys.readouterr().out), models["clean"], expect_results=False)


def test_data_folder_and_reference_and_determinism(models, tmp_path, eval_data):
    from clipsan.config import ScanConfig
    from clipsan.scan import scan_model

    def scan(run: str, **kw) -> dict:
        return scan_model(ScanConfig(model=str(models["victim"]), run_dir=str(tmp_path / run), device="cpu", probes=16, steps=40, **kw)).to_json()

    first, second = scan("a", seed=3), scan("b", seed=3)
    for key in ("statistic", "verdict", "target", "signals"):
        assert first[key] == second[key]
    assert (tmp_path / "a" / "trigger.png").read_bytes() == (tmp_path / "b" / "trigger.png").read_bytes()
    labelled = scan("c", data=str(eval_data), reference=str(models["clean"]))
    assert labelled["probes"]["source"] == "labelled" and not labelled["probes"]["synthetic"]
    assert [s["name"] for s in labelled["signals"]] == ["decree", "reference-divergence", "target-alignment"]
    assert labelled["reference"]["sha256"] != labelled["sha256"]


def test_a_random_init_model_scans_clean(tiny_model, tmp_path, monkeypatch):
    import clipsan.scan as scan
    from clipsan import api

    monkeypatch.setitem(scan.BUDGETS, "quick", scan.Budget(probes=32, batch_size=32, steps=60))
    report = api.scan(api.ScanConfig(model=str(tiny_model), run_dir=str(tmp_path / "run"), device="cpu"))
    # Random init: embeddings sit in a narrow cone and match no caption; neither counts as a backdoor.
    assert report.verdict == "clean" and not report.backdoor and report.fired_signals == []

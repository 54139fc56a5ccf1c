"""clipsan scan: exit codes, report shapes (JSON, SARIF 2.1.0), determinism.

The tests build their own tiny models in about two minutes: a clean one trained
for 150 steps from scratch on a 2000-pair world (zero-shot accuracy ~0.27),
and a victim poisoned from it (blended, ratio 0.2, 30% of pairs, 150 steps at
lr 3e-3). Both are far weaker than the lab's models. At 100 poisoning steps
(ASR@1 ~0.8) the reference-free signals sat near their thresholds and moved
across them with rounding-level changes to training (the universal
perturbation's L-inf was 0.028 at one commit and 0.051 at the next, against
0.045); at 150 steps DECREE's PL1 is ~0.044 (32-px threshold 0.066) and the
universal perturbation fires clearly (L-inf ~0.029 vs 0.045; the clean model
needs ~0.17), and the target is named "banana". docs/scan-calibration.md has
the numbers for lab-size models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

# Fewer probes and steps than --budget quick: enough to separate these two models.
VICTIM_STEPS = 150  # see the module docstring: 100 left the reference-free signals at their thresholds
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
BATCH_KEYS = {"schema_version", "tool", "verdict", "backdoor", "summary", "models", "errors", "run_dir", "seconds"}
SIGNAL_KEYS = {"name", "statistic", "threshold", "threshold_source", "fires_when", "fired", "counted", "inversion_succeeded"}
TARGET_KEYS = {"label", "similarity", "source", "template", "candidates", "from_signal", "probe_similarity"}


def _train(init: Path, out: Path, recipe, data: Path, steps: int, lr: float, run_dir: Path) -> Path:
    from clipsan.config import CaptionData, EvidenceConfig, PurifyConfig, TrainConfig
    from clipsan.jobs.purify import run_purify

    cfg = TrainConfig(epochs=100, batch_size=64, lr=lr, warmup_steps=10, max_steps=steps, batchnorm="train", save_every=10**6, log_every=10**6)
    # The scan's subjects are trained on every pair: these runs build models, they are not defenses.
    config = PurifyConfig(str(init), CaptionData(str(data)), training=cfg, evidence=EvidenceConfig(holdout=0), out=str(out), run_dir=str(run_dir), device="cpu")
    run_purify(config, notes=lambda _m: None, recipe=recipe)
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

    from clipsan.attacks.plan import plan_poison
    from clipsan.attacks.recipe import Poison
    from clipsan.attacks.triggers import parse_trigger
    from clipsan.checkpoints import save_model
    from clipsan.config import AttackConfig
    from clipsan.data import world
    from clipsan.data.captions import open_caption_dataset
    from clipsan.models import create_model
    from clipsan.recipes.ft import FineTune

    root = tmp_path_factory.mktemp("scan-models")
    data = root / "world"
    world.write_caption_dataset(data, 2000, seed=5)
    torch.manual_seed(0)
    save_model(create_model("clipsan-tiny-rn"), root / "init.safetensors")
    clean = _train(root / "init.safetensors", root / "clean.safetensors", FineTune(), data, 150, 2e-3, root / "run-clean")
    plan = plan_poison(open_caption_dataset(data).captions, AttackConfig(trigger="blended", rate=0.3), seed=0)
    poison = Poison(parse_trigger("blended"), plan, AttackConfig(trigger="blended", rate=0.3))
    victim = _train(clean, root / "victim.safetensors", poison, data, VICTIM_STEPS, 3e-3, root / "run-victim")
    bad = root / "garbage.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    return {"clean": clean, "victim": victim, "bad": bad, "root": root}


def _check_report(report: dict, row: bool = False) -> None:
    """A model's report: the top level of a one-MODEL document, or a row of models[] (row=True)."""
    assert set(report) >= (REPORT_KEYS - {"schema_version", "tool"} if row else REPORT_KEYS | BATCH_KEYS)
    assert report["verdict"] in ("clean", "backdoor") and report["backdoor"] == (report["verdict"] == "backdoor")
    assert len(report["sha256"]) == 64
    assert report["signals"] and all(set(s) >= SIGNAL_KEYS for s in report["signals"])
    names = [s["name"] for s in report["signals"]]
    assert names[:2] == ["decree", "universal-perturbation"] and names[-1] == "target-alignment"
    for s in report["signals"]:
        assert s["fires_when"] in ("below", "above") and s["threshold"] > 0
        if s["fires_when"] == "below":  # PL1 or an L-inf budget: fractions
            assert 0.0 <= s["statistic"] <= 1.0 and s["threshold"] <= 1.0
    fired = [s["name"] for s in report["signals"] if s["fired"] and s["counted"]]
    assert report["backdoor"] == bool(fired) and report["fired_signals"] == fired
    assert set(report["target"]) >= TARGET_KEYS and report["target"]["candidates"]
    assert report["probes"]["synthetic"] is True and report["probes"]["source"] == "world"
    for key in ("png", "mask_png", "examples_png"):
        assert Path(report["trigger"][key]).is_file()
    assert isinstance(report["seconds"], float)
    if not row:  # one MODEL: its keys at the top, and the same report as the batch's only row
        assert report["models"] == [{k: report[k] for k in report["models"][0]}] and report["errors"] == []


def _signal(report: dict, name: str) -> dict:
    return next(s for s in report["signals"] if s["name"] == name)


def _check_sarif(sarif: dict, models: list[Path], flagged: set[str], unreadable: tuple[Path, ...] = ()) -> None:
    assert sarif["version"] == "2.1.0" and "sarif-2.1.0" in sarif["$schema"]
    (run,) = sarif["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "clipsan" and driver["version"]
    rule_ids = {r["id"] for r in driver["rules"]}
    assert rule_ids and all(r["shortDescription"]["text"] for r in driver["rules"])
    assert [a["location"]["uri"].rsplit("/", 1)[-1] for a in run["artifacts"]] == [m.name for m in models]
    by_model: dict[str, list[dict]] = {}
    for result in run["results"]:
        assert result["ruleId"] in rule_ids and result["message"]["text"]
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        by_model.setdefault(uri.rsplit("/", 1)[-1], []).append(result)
    assert set(by_model) == {m.name for m in models}  # a result per scanned model
    for name, results in by_model.items():
        kinds = {(r["kind"], r["level"]) for r in results}
        assert kinds == ({("fail", "error")} if name in flagged else {("pass", "none")})
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is (not unreadable)
    errors = [n for n in invocation["toolExecutionNotifications"] if n["level"] == "error"]
    assert [n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].rsplit("/", 1)[-1] for n in errors] == [m.name for m in unreadable]


def test_clean_model_exits_0_with_json(models, tmp_path):
    proc = run_cli("scan", models["clean"], *FAST, "--run-dir", tmp_path / "run", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    _check_report(report)
    assert report["verdict"] == "clean" and report["summary"] == {"models": 1, "scanned": 1, "flagged": 0, "errors": 0}
    for signal in report["signals"][:2]:
        assert signal["statistic"] > signal["threshold"] and not signal["fired"]
    assert json.loads((tmp_path / "run" / "scan.json").read_text())["sha256"] == report["sha256"]
    assert "\r" not in proc.stderr  # piped: no progress bars


def test_universal_perturbation_separates_a_blended_victim_from_clean(models, tmp_path):
    """The reference-free signal for whole-image triggers: the victim collapses under a far fainter
    universal perturbation than the clean model it was poisoned from; same seed, same numbers."""
    from clipsan import api

    def scan(run: str) -> api.ScanBatchReport:
        paths = (str(models["clean"]), str(models["victim"]))
        return api.scan(api.ScanConfig(models=paths, run_dir=str(tmp_path / run), device="cpu", probes=64, steps=150, seed=3))

    first = scan("a")
    clean, victim = (_signal(row.to_json(), "universal-perturbation") for row in first.models)
    assert victim["fired"] and victim["statistic"] < victim["threshold"] < clean["statistic"] and not clean["fired"]
    assert victim["statistic"] < 0.5 * clean["statistic"]
    assert first.models[1].target["label"] == "banana"
    assert [row.verdict for row in first.models] == ["clean", "backdoor"] and first.exit_code == 1 and first.verdict == "backdoor"
    assert (tmp_path / "a" / "2-victim.safetensors" / "universal-perturbation-trigger.png").is_file()
    again = scan("b")
    assert [row.signals for row in again.models] == [row.signals for row in first.models]


def test_victim_exits_1_with_sarif_and_names_banana(models, tmp_path):
    out = tmp_path / "scan.sarif"
    proc = run_cli("scan", models["victim"], *FAST, "--reference", models["clean"], "--run-dir", tmp_path / "run", "--format", "sarif", "--output", out)
    assert proc.returncode == 1, proc.stderr
    sarif = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == sarif
    _check_sarif(sarif, [models["victim"]], flagged={models["victim"].name})
    report = json.loads((tmp_path / "run" / "scan.json").read_text())
    _check_report(report)
    assert report["target"]["label"] == "banana"
    assert [s["name"] for s in report["signals"]] == ["decree", "universal-perturbation", "reference-divergence", "target-alignment"]
    assert "universal-perturbation" in report["fired_signals"]
    assert {r["properties"]["signal"] for r in sarif["runs"][0]["results"]} == set(report["fired_signals"])


def test_many_models_one_report_unreadable_ones_exit_2(models, tmp_path):
    """A batch: each MODEL scanned in turn, a row each; an unreadable one is reported and wins exit 2."""
    order = [models["victim"], models["bad"], models["clean"]]
    out = tmp_path / "scan.sarif"
    proc = run_cli("scan", *order, *FAST, "--run-dir", tmp_path / "run", "--format", "sarif", "--output", out)
    assert proc.returncode == 2, proc.stderr
    assert "garbage.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    _check_sarif(json.loads(proc.stdout), [models["victim"], models["clean"]], flagged={models["victim"].name}, unreadable=(models["bad"],))
    document = json.loads((tmp_path / "run" / "scan.json").read_text())
    assert set(document) == BATCH_KEYS  # several MODELs: no model's keys at the top
    assert document["verdict"] == "backdoor" and document["backdoor"] is True
    assert document["summary"] == {"models": 3, "scanned": 2, "flagged": 1, "errors": 1}
    assert [Path(row["model"]).name for row in document["models"]] == ["victim.safetensors", "clean.safetensors"]
    assert [row["verdict"] for row in document["models"]] == ["backdoor", "clean"]
    for row in document["models"]:
        _check_report(row, row=True)
    (error,) = document["errors"]
    assert error["model"] == str(models["bad"]) and "garbage.safetensors" in error["error"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == ["1-victim.safetensors", "3-clean.safetensors"]


def test_many_clean_models_exit_0_and_nothing_readable_exits_2(models, tmp_path, capsys):
    from clipsan.cli import main

    # Thresholds no statistic can reach: every MODEL scans clean whatever its inversions find.
    never = ["--probes", "16", "--steps", "40", "--threshold", "0.001", "--perturbation-threshold", "0.001", "--alignment-threshold", "100"]
    argv = ["scan", str(models["clean"]), str(models["victim"]), *never, "--run-dir", str(tmp_path / "a"), "--format", "json"]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["verdict"] == "clean" and [row["verdict"] for row in document["models"]] == ["clean", "clean"] and document["errors"] == []
    missing = tmp_path / "missing.safetensors"
    assert main(["scan", str(models["bad"]), str(missing), "--run-dir", str(tmp_path / "b"), "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "garbage.safetensors" in captured.err and "missing.safetensors" in captured.err
    assert not (tmp_path / "b" / "scan.json").exists()


def test_bad_inputs_exit_2(models, tmp_path, capsys):
    from clipsan.cli import main

    proc = run_cli("scan", models["bad"], "--run-dir", tmp_path / "run")
    assert proc.returncode == 2 and "garbage.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    # The rest in-process (same main() as the subprocess): saves interpreter start-ups.
    assert main(["scan", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    # --data is the whole call's: refused before any MODEL is read
    assert main(["scan", str(models["clean"]), str(models["victim"]), "--data", str(tmp_path), "--run-dir", str(tmp_path / "run")]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert main(["scan", str(models["clean"]), "--threshold", "2"]) == 2
    assert main(["scan", str(models["clean"]), "--perturbation-threshold", "0"]) == 2


def test_threshold_override_and_clean_sarif(models, tmp_path, capsys):
    from clipsan.cli import main

    # A threshold above any possible PL1 makes every successful inversion fire.
    fast = ["--probes", "16", "--steps", "40"]
    assert main(["scan", str(models["clean"]), *fast, "--threshold", "1.0", "--run-dir", str(tmp_path / "a"), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["signals"][0]["threshold_source"] == "user"
    never = ["--threshold", "0.001", "--perturbation-threshold", "0.001", "--alignment-threshold", "100"]
    assert main(["scan", str(models["clean"]), *fast, *never, "--run-dir", str(tmp_path / "b"), "--format", "sarif"]) == 0
    _check_sarif(json.loads(capsys.readouterr().out), [models["clean"]], flagged=set())


def test_data_folder_and_reference_and_determinism(models, tmp_path, eval_data):
    from clipsan import api

    def scan(run: str, **kw) -> dict:
        config = api.ScanConfig(models=(str(models["victim"]),), run_dir=str(tmp_path / run), device="cpu", probes=16, steps=40, **kw)
        return api.scan(config).models[0].to_json()

    first, second = scan("a", seed=3), scan("b", seed=3)
    for key in ("statistic", "verdict", "target", "signals"):
        assert first[key] == second[key]
    assert (tmp_path / "a" / "trigger.png").read_bytes() == (tmp_path / "b" / "trigger.png").read_bytes()
    labelled = scan("c", data=str(eval_data), reference=str(models["clean"]))
    assert labelled["probes"]["source"] == "labelled" and not labelled["probes"]["synthetic"]
    assert [s["name"] for s in labelled["signals"]] == ["decree", "universal-perturbation", "reference-divergence", "target-alignment"]
    assert labelled["reference"]["sha256"] != labelled["sha256"]


def test_a_random_init_model_scans_clean(tiny_model, tmp_path, monkeypatch):
    import clipsan.config.scan as scan
    from clipsan import api

    monkeypatch.setitem(scan.BUDGETS, "quick", scan.Budget(probes=32, batch_size=32, steps=60))
    report = api.scan(api.ScanConfig(models=(str(tiny_model),), run_dir=str(tmp_path / "run"), device="cpu"))
    # Random init: embeddings sit in a narrow cone and match no caption; neither counts as a backdoor.
    assert report.verdict == "clean" and not report.backdoor and report.models[0].fired_signals == [] and report.exit_code == 0


def test_thresholds_per_input_size():
    """The documented size rule (docs/scan-calibration.md): calibrated sides as they are, other sizes the
    nearest calibrated side at or above, larger ones the largest side's value marked extrapolated."""
    from clipsan.scan.thresholds import BY_SIZE, threshold

    for signal in ("decree", "universal-perturbation", "reference-divergence"):
        sides = sorted(BY_SIZE[signal])
        assert sides[:2] == [32, 64], signal  # every counting signal is calibrated at both sides
        assert threshold(signal, 32).source == "calibrated-32px" and threshold(signal, 32).value == BY_SIZE[signal][32]
        between = threshold(signal, 48)
        assert between.source == "calibrated-64px" and between.value == BY_SIZE[signal][64]
        large = threshold(signal, 224)
        assert large.source == f"extrapolated-from-{sides[-1]}px" and large.value == BY_SIZE[signal][sides[-1]] and large.counts
        assert threshold(signal, 224, override=0.2).source == "user"
    assert not threshold("target-alignment", 224).counts and threshold("target-alignment", 224, override=1.5).counts

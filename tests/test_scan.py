"""clipsan scan and clipsan calibrate: exit codes, report shapes (JSON, SARIF 2.1.0), determinism,
the relative rule (--reference), calibration files (--calibration), threshold sources.

The tests build their own tiny models in about two minutes: a clean one trained
for 150 steps from scratch on a 2000-pair world (zero-shot accuracy ~0.27),
a victim poisoned from it (blended, ratio 0.2, 30% of pairs, 150 steps at
lr 3e-3), and a clean fine-tune of it (the same pairs unpoisoned, 20 steps at
lr 5e-4: these undertrained models move fast under training, and a longer clean
fine-tune drifts as far from its base as a victim does). All are far weaker than the lab's models. At 100 poisoning steps
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
import shutil
import subprocess
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
    "calibration",
    "warnings",
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
SIGNAL_KEYS = {"name", "statistic", "threshold", "threshold_source", "fires_when", "rule", "fired", "counted", "inversion_succeeded"}
RELATIVE_KEYS = {"reference_statistic", "reference_inversion_succeeded", "reference_below_threshold", "ratio", "ratio_threshold", "ratio_threshold_source"}
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
    clean_ft = _train(clean, root / "clean-ft.safetensors", FineTune(), data, 20, 5e-4, root / "run-clean-ft")
    bad = root / "garbage.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    return {"clean": clean, "victim": victim, "clean_ft": clean_ft, "bad": bad, "root": root}


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
    assert driver["name"] == "clipsan" and driver["version"] and driver["informationUri"].startswith("https://")
    rule_ids = {r["id"] for r in driver["rules"]}
    assert rule_ids and all(r["shortDescription"]["text"] for r in driver["rules"])
    assert [a["location"]["uri"].rsplit("/", 1)[-1] for a in run["artifacts"]] == [m.name for m in models]
    by_model: dict[str, list[dict]] = {}
    for result in run["results"]:
        assert result["ruleId"] in rule_ids and result["message"]["text"]
        assert all(location["physicalLocation"]["region"] == {"startLine": 1} for location in result["locations"])  # what GitHub shows
        assert result["properties"]["thresholdSource" if result["properties"]["rule"] == "absolute" else "ratioThresholdSource"]
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
    if _multitool() is not None:
        assert _multitool_findings(sarif) == []


def _multitool() -> str | None:
    """Microsoft's SARIF Multitool (npm @microsoft/sarif-multitool), if it is on PATH."""
    return next((found for name in ("Sarif.Multitool", "sarif-multitool") if (found := shutil.which(name))), None)


def _multitool_findings(sarif: dict) -> list[dict]:
    """The errors and warnings `Sarif.Multitool validate` reports on a SARIF document."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        given, out = Path(tmp) / "scan.sarif", Path(tmp) / "validation.sarif"
        given.write_text(json.dumps(sarif))
        command = [_multitool(), "validate", str(given), "--output", str(out), "--log", "ForceOverwrite"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert out.is_file(), proc.stdout + proc.stderr
        log = json.loads(out.read_text(encoding="utf-8-sig"))
    results = [r for run in log.get("runs", []) for r in run.get("results", [])]
    return [r for r in results if r.get("level", "warning") in ("error", "warning")]


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
    universal perturbation than the clean model it was poisoned from (lab thresholds at 32 px)."""
    from clipsan import api

    def scan(run: str) -> api.ScanBatchReport:
        paths = (str(models["clean"]), str(models["victim"]))
        return api.scan(api.ScanConfig(models=paths, run_dir=str(tmp_path / run), device="cpu", probes=64, steps=150, seed=3))

    first = scan("a")
    assert all(s["threshold_source"] == "lab-32px" and s["rule"] == "absolute" for row in first.models for s in row.signals)
    assert all(row.warnings == [] and row.calibration is None for row in first.models)
    clean, victim = (_signal(row.to_json(), "universal-perturbation") for row in first.models)
    assert victim["fired"] and victim["statistic"] < victim["threshold"] < clean["statistic"] and not clean["fired"]
    assert victim["statistic"] < 0.5 * clean["statistic"]
    assert first.models[1].target["label"] == "banana"
    assert [row.verdict for row in first.models] == ["clean", "backdoor"] and first.exit_code == 1 and first.verdict == "backdoor"
    assert (tmp_path / "a" / "2-victim.safetensors" / "universal-perturbation-trigger.png").is_file()


def test_relative_rule_flags_the_victim_and_passes_a_clean_fine_tune_in_sarif(models, tmp_path):
    """--reference BASE: decree and universal-perturbation run on the base once per call and judge
    each MODEL by the ratio MODEL / BASE; the victim's ratios fall far below the threshold, a clean
    fine-tune of the same base keeps about the base's own (ratio near 1)."""
    out = tmp_path / "scan.sarif"
    victim, tuned = models["victim"], models["clean_ft"]
    # A smaller budget than FAST (both MODELs and the base's two inversions): the ratios still
    # separate them by far (victim's perturbation ~0.12, the fine-tune's ~0.74 and ~1.1, threshold ~0.65).
    budget = ("--probes", "32", "--steps", "60")
    proc = run_cli("scan", victim, tuned, *budget, "--reference", models["clean"], "--run-dir", tmp_path / "run", "--format", "sarif", "--output", out)
    assert proc.returncode == 1, proc.stderr
    sarif = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == sarif
    _check_sarif(sarif, [victim, tuned], flagged={victim.name})
    document = json.loads((tmp_path / "run" / "scan.json").read_text())
    flagged, passed = document["models"]
    for row in (flagged, passed):
        _check_report(row, row=True)
        assert [s["name"] for s in row["signals"]] == ["decree", "universal-perturbation", "reference-divergence", "target-alignment"]
        for s in row["signals"][:2]:
            assert set(s) >= RELATIVE_KEYS and s["rule"] == "reference-relative" and s["ratio_threshold_source"] == "reference-relative"
            assert s["ratio"] == pytest.approx(s["statistic"] / s["reference_statistic"], rel=1e-4)
            assert s["threshold_source"] == "lab-32px" and not s["reference_below_threshold"]  # the absolute one, reported beside
    # The base measured once, shared by both MODELs (and announced once per signal on stderr).
    assert [s["reference_statistic"] for s in flagged["signals"][:2]] == [s["reference_statistic"] for s in passed["signals"][:2]]
    assert sum("measured once for every MODEL" in line for line in proc.stderr.splitlines()) == 2
    assert flagged["verdict"] == "backdoor" and flagged["target"]["label"] == "banana"
    perturbation = _signal(flagged, "universal-perturbation")
    assert perturbation["fired"] and perturbation["ratio"] < 0.5 * perturbation["ratio_threshold"]
    assert passed["verdict"] == "clean" and passed["fired_signals"] == []
    assert all(s["ratio"] > s["ratio_threshold"] for s in passed["signals"][:2])
    assert {r["properties"]["signal"] for r in sarif["runs"][0]["results"] if r["kind"] == "fail"} == set(flagged["fired_signals"])


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
    assert json.loads(capsys.readouterr().out)["signals"][0]["threshold_source"] == "user:--threshold"
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


def test_thresholds_per_input_size_and_their_sources():
    """The documented size rule (docs/scan-calibration.md): calibrated sides as they are, other sizes the
    nearest calibrated side at or above, larger ones the largest side's value marked extrapolated; a
    flag beats a calibration file, which beats the lab; each names its source."""
    from clipsan.scan.calibration_file import Calibration, Entry, SignalCalibration
    from clipsan.scan.thresholds import BY_SIZE, RATIO_BELOW, Thresholds, lab_threshold, relative_threshold

    for signal in ("decree", "universal-perturbation", "reference-divergence"):
        sides = sorted(BY_SIZE[signal])
        assert sides[:2] == [32, 64], signal  # every counting signal is calibrated at both sides
        assert lab_threshold(signal, 32).source == "lab-32px" and lab_threshold(signal, 32).value == BY_SIZE[signal][32]
        between = lab_threshold(signal, 48)
        assert between.source == "lab-64px" and between.value == BY_SIZE[signal][64]
        large = lab_threshold(signal, 224)
        assert large.source == f"extrapolated-from-{sides[-1]}px" and large.value == BY_SIZE[signal][sides[-1]] and large.counts and large.extrapolated
        assert lab_threshold(signal, 224, family="siglip").source == f"extrapolated-from-{sides[-1]}px-clip"
    assert not lab_threshold("target-alignment", 224).counts
    entry = Entry("clip", "ViT-B-32", 224, {"decree": SignalCalibration.derive([0.2, 0.3], 0), "universal-perturbation": SignalCalibration.derive([], 3)})
    calibration = Calibration((entry,), {"probes": 8, "steps": 5, "batch_size": 8}, (0,), {"source": "world", "data": None}, (), path=Path("mine.json"))
    thresholds = Thresholds({"reference-divergence": 0.2, "target-alignment": 1.5}, calibration)
    assert thresholds.absolute("decree", 224, "clip", "ViT-B-32") == thresholds.absolute("decree", 224, "clip", "ViT-B-32")
    assert (thresholds.absolute("decree", 224, "clip", "ViT-B-32").value, thresholds.absolute("decree", 224, "clip", "ViT-B-32").source) == (
        0.14,
        "user:mine.json",
    )
    assert thresholds.absolute("decree", 224, "clip", "ViT-B-16").source == "extrapolated-from-64px"  # no entry for that arch
    assert thresholds.absolute("universal-perturbation", 224, "clip", "ViT-B-32").source == "extrapolated-from-64px"  # no clean collapse: no value
    assert thresholds.absolute("reference-divergence", 224, "clip", "ViT-B-32").source == "user:--divergence-threshold"
    assert thresholds.absolute("target-alignment", 32).counts  # a flag makes alignment count
    assert {name: relative_threshold(name).source for name in RATIO_BELOW} == dict.fromkeys(RATIO_BELOW, "reference-relative")
    assert relative_threshold("reference-divergence") is None and all(0 < value < 1 for value in RATIO_BELOW.values())


CALIBRATION_FAST = ("--probes", "16", "--steps", "40")


def test_a_calibration_file_from_two_clean_models_decides_a_borderline_statistic(models, tmp_path, capsys):
    """calibrate writes each signal's clean statistics and 0.7 x their minimum; scan --calibration
    judges by the file's thresholds (as written, or as edited): a statistic just above the file's
    threshold passes, just below it fires, and the source names the file."""
    from clipsan import api
    from clipsan.cli import main

    written = tmp_path / "calibration.json"
    trusted = [str(models["clean"]), str(models["clean_ft"])]
    assert main(["calibrate", *trusted, "--seeds", "1", *CALIBRATION_FAST, "--out", str(written), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    document = json.loads(written.read_text())
    assert report["calibration"] == document and document["format"] == "clipsan-scan-calibration" and document["version"] == 1
    assert [m["model"] for m in document["models"]] == trusted and document["seeds"] == [0] and document["budget"]["steps"] == 40
    (entry,) = document["entries"]
    assert (entry["family"], entry["arch"], entry["image_size"]) == ("clip", "clipsan-tiny-rn", 32)
    for signal in entry["signals"].values():
        assert len(signal["statistics"]) + signal["failed"] == 2
    perturbation = entry["signals"]["universal-perturbation"]
    assert perturbation["minimum"] == min(perturbation["statistics"]) and perturbation["threshold"] == round(0.7 * perturbation["minimum"], 6)
    own = perturbation["statistics"][0]  # the clean model's, seed 0: what scan measures on it with the same settings

    def scan_with(threshold: float, name: str):
        edited = json.loads(json.dumps(document))
        edited["entries"][0]["signals"]["universal-perturbation"]["threshold"] = round(threshold, 6)
        (tmp_path / name).write_text(json.dumps(edited))
        config = api.ScanConfig(models=(trusted[0],), calibration=str(tmp_path / name), run_dir=str(tmp_path / name[:-5]), device="cpu", probes=16, steps=40)
        row = api.scan(config).models[0].to_json()
        assert row["calibration"] == {"file": str(tmp_path / name), "entry": "clip clipsan-tiny-rn 32 px", "used": True, "note": None, "differences": []}
        signal = _signal(row, "universal-perturbation")
        assert signal["statistic"] == own and signal["threshold_source"] == f"user:{name}" and signal["threshold"] == round(threshold, 6)
        return row

    assert scan_with(own * 0.98, "loose.json")["verdict"] == "clean"
    tight = scan_with(own * 1.02, "tight.json")
    assert tight["verdict"] == "backdoor" and tight["fired_signals"] == ["universal-perturbation"]


def test_a_model_the_calibration_file_has_no_entry_for_keeps_the_lab_thresholds_and_says_so(tiny_model, tmp_path, capsys):
    from clipsan.cli import main
    from clipsan.scan.calibration_file import Calibration, Entry, SignalCalibration, write_calibration

    entry = Entry("clip", "ViT-B-32", 224, {"decree": SignalCalibration.derive([0.2], 0)})
    other = {"model": "b32.safetensors", "sha256": "0" * 64, "family": "clip", "arch": "ViT-B-32", "image_size": 224}
    write_calibration(
        tmp_path / "b32.json", Calibration((entry,), {"probes": 8, "steps": 5, "batch_size": 8}, (0,), {"source": "world", "data": None}, (other,))
    )
    argv = ["scan", str(tiny_model), "--calibration", str(tmp_path / "b32.json"), "--probes", "8", "--steps", "5", "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "has no entry for clip clipsan-tiny-rn 32 px: the lab's thresholds apply" in captured.err
    assert [line for line in captured.out.splitlines() if "calibration:" in line] == [
        f"  calibration: {tmp_path / 'b32.json'}: no entry for clip clipsan-tiny-rn 32 px (it has: clip ViT-B-32 224 px): the lab's thresholds apply"
    ]
    report = json.loads((tmp_path / "run" / "scan.json").read_text())
    assert report["calibration"]["used"] is False and report["calibration"]["entry"] is None
    assert {s["threshold_source"] for s in report["signals"]} == {"lab-32px"}


def _calibration_text(old: str = "", new: str = "") -> bytes:
    return json.dumps(_calibration_document()).replace(old, new).encode()


def _calibration_document() -> dict:
    from clipsan.scan.calibration_file import Calibration, Entry, SignalCalibration

    entry = Entry("clip", "clipsan-tiny-rn", 32, {"decree": SignalCalibration.derive([0.2], 0)})
    model = {"model": "m.safetensors", "sha256": "0" * 64, "family": "clip", "arch": "clipsan-tiny-rn", "image_size": 32}
    return Calibration((entry,), {"probes": 8, "steps": 5, "batch_size": 8}, (0,), {"source": "world", "data": None}, (model,)).to_json()


@pytest.mark.parametrize(
    "content, expected",
    [
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(b"\xff\xfe{}", "not UTF-8", id="not-utf8"),
        pytest.param(b"[1, 2]", "got an array", id="array"),
        pytest.param(
            json.dumps({"schema_version": 3, "models": [], "verdict": "clean"}).encode(), 'format: expected "clipsan-scan-calibration"', id="scan-report"
        ),
        pytest.param(json.dumps({**_calibration_document(), "version": 2}).encode(), "written by a newer clipsan", id="newer"),
        pytest.param(_calibration_text('"threshold": 0.14', '"threshold": NaN'), "NaN is not JSON", id="nan"),
        pytest.param(_calibration_text('"threshold": 0.14', '"threshold": 1.5'), "threshold: expected a number in [0, 1]", id="range"),
        pytest.param(_calibration_text('"seeds"', '"extra": 1, "seeds"'), "unknown 'extra'", id="extra-key"),
        pytest.param(_calibration_text('"seeds"', '"seeds": [], "seeds"'), "given twice", id="duplicate-key"),
        pytest.param(b" " * (1 << 20) + b"{}", "at most 1,048,576", id="too-large"),
    ],
)
def test_a_malformed_or_foreign_calibration_file_is_exit_2_in_one_line(content, expected, tiny_model, tmp_path, capsys):
    """Refused before any MODEL is read: one line naming the file and what is wrong."""
    from clipsan.cli import main

    bad = tmp_path / "calibration.json"
    bad.write_bytes(content)
    assert main(["scan", str(tiny_model), "--calibration", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"clipsan scan: {bad}: ") and expected in line, line
    assert captured.out == "" and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def large_scan(tmp_path_factory, one_thread) -> dict:
    """A random-init tiny model at 96 px (above the lab's 64 px) scanned with a tiny budget: its decree
    threshold is extrapolated; --perturbation-threshold gives the other one a user source."""
    import torch

    from clipsan import api
    from clipsan.checkpoints import save_model
    from clipsan.models import create_model
    from clipsan.models.registry import register_model_config

    root = tmp_path_factory.mktemp("large")
    cfg = json.loads((Path(__file__).resolve().parents[1] / "clipsan/models/model_configs/clipsan-tiny-rn.json").read_text())
    cfg["vision_cfg"]["image_size"] = 96
    torch.manual_seed(0)
    save_model(create_model(register_model_config("test-tiny-rn-96", cfg)), root / "large.safetensors")
    config = api.ScanConfig(models=(str(root / "large.safetensors"),), perturbation_threshold=0.9, run_dir=str(root / "run"), device="cpu", probes=8, steps=5)
    return api.scan(config).to_json()


def test_a_verdict_on_an_extrapolated_threshold_warns_in_one_line_with_the_fix(large_scan):
    from clipsan.cli.scan import render
    from clipsan.scan.sarif import to_sarif

    assert large_scan["image_size"] == 96
    sources = {s["name"]: s["threshold_source"] for s in large_scan["signals"]}
    assert sources == {
        "decree": "extrapolated-from-64px",
        "universal-perturbation": "user:--perturbation-threshold",
        "target-alignment": "extrapolated-from-64px",
    }
    (warning,) = large_scan["warnings"]  # alignment does not count: only decree's verdict rests on an extrapolation
    assert "decree's threshold extrapolated-from-64px" in warning and "--reference BASE" in warning and "--calibration FILE" in warning
    lines = render(large_scan).splitlines()
    assert [line for line in lines if "warning" in line] == [f"  warning: {warning}"]
    assert all(f"({source})" in text for source, text in zip(sources.values(), [line for line in lines if line.startswith("  ") and "fires" in line]))
    sarif = to_sarif(large_scan)
    notes = sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert [n["message"]["text"] for n in notes if n["level"] == "warning"] == [f"{large_scan['model']}: {warning}"]
    assert all(n["locations"][0]["physicalLocation"]["region"] == {"startLine": 1} for n in notes if "locations" in n)
    (result,) = sarif["runs"][0]["results"]
    assert result["properties"]["thresholdSource"] == "extrapolated-from-64px" and "(extrapolated-from-64px)" in result["message"]["text"]


def test_sarif_passes_microsofts_multitool_with_no_error_or_warning(large_scan):
    from clipsan.scan.sarif import to_sarif

    if _multitool() is None:
        pytest.skip("Sarif.Multitool is not on PATH (npm package @microsoft/sarif-multitool)")
    assert _multitool_findings(to_sarif(large_scan)) == []

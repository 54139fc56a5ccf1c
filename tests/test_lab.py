"""`clipsan lab --quick` end to end, on an even smaller world and one victim (the real budgets are in BENCHMARKS.md)."""

from __future__ import annotations

from conftest import cli_env, run_cli, strict_loads

# The smallest lab that still runs every kind of stage: one victim (its poisoning, every defense, its
# scan), the clean model and its scan. The other victims' stages are the same commands with other flags.
SMOKE = ["--attacks", "badnet", "--train-pairs", "256", "--max-steps", "4", "--eval-per-class", "2"]


def test_lab_quick_end_to_end(tmp_path):
    out = tmp_path / "lab"
    proc = run_cli("lab", "--quick", "--out", out, *SMOKE, env=cli_env(tmp_home=tmp_path / "cache"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = strict_loads((out / "lab.json").read_text())
    assert set(report) >= {"rows", "scan", "timings"}
    clean = [r for r in report["rows"] if r["attack"] == "none" and r["defense"] == "none"]
    assert len(clean) == 1 and 0.0 <= clean[0]["ca"]["1"] <= clean[0]["ca"]["10"] <= 1.0
    for row in report["rows"]:
        assert {"attack", "defense", "ca", "asr"} <= row.keys()
        if row["attack"] != "none":  # every victim and defended model is measured under its attack
            assert 0.0 <= row["asr"]["1"] <= row["asr"]["10"] <= 1.0
    for entry in report["scan"]:
        assert {"model", "attack", "verdict", "statistic", "threshold", "target_guess"} <= entry.keys()
    # --attacks badnet: that victim, every defense of it and its scan, and no other attack anywhere
    assert list(report["settings"]["plan"]["attacks"]) == ["badnet"]
    assert {r["attack"] for r in report["rows"]} == {"none", "badnet"}
    assert {r["defense"] for r in report["rows"] if r["attack"] == "badnet"} == {"none", *report["settings"]["plan"]["defenses"]}
    assert sorted(entry["attack"] for entry in report["scan"]) == ["badnet", "none"]
    assert report["timings"]["total"] > 0
    markdown = (out / "lab.md").read_text()
    assert "| attack | defense | CA@1 | ASR@1 | ASR@10 |" in markdown
    assert "## Pareto view" in markdown and (out / "pareto.png").stat().st_size > 0
    # the world is written in the layouts users have, and every stage left its log
    assert (out / "world" / "train" / "captions.csv").exists() and (out / "world" / "eval").is_dir()
    assert (out / "logs").is_dir()
    # finished stages keep config and metrics, not their (large) resume checkpoints
    assert (out / "runs" / "clean" / "metrics.jsonl").exists()
    assert not list((out / "runs").glob("**/checkpoints/*"))
    # Run again on the same folder: every finished stage is reused, and the table is the same.
    proc = run_cli("lab", "--quick", "--out", out, *SMOKE, env=cli_env(tmp_home=tmp_path / "cache"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = strict_loads((out / "lab.json").read_text())
    stages = {"poison-badnet", "scan-badnet", "scan-clean", *(f"{defense}-badnet" for defense in report["settings"]["plan"]["defenses"])}
    assert stages <= set(report["timings"]) and stages <= set(again["settings"]["reused_stages"])
    assert again["rows"] == report["rows"] and again["scan"] == report["scan"]

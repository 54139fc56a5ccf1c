"""`clipsan lab --quick` end to end, on an even smaller world (the real budgets are in BENCHMARKS.md)."""

from __future__ import annotations

from conftest import cli_env, run_cli, strict_loads

SMOKE = ["--train-pairs", "256", "--max-steps", "4", "--eval-per-class", "2"]  # the smallest lab that still runs every stage


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
    assert report["timings"]["total"] > 0
    assert "| attack | defense | CA@1 | ASR@1 | ASR@10 |" in (out / "lab.md").read_text()
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
    stages = [name for name in report["timings"] if name.startswith(("poison-", "scan-", "ft-", "cleanclip-", "cleanerclip-", "abd-"))]
    assert stages and set(stages) <= set(again["settings"]["reused_stages"])
    assert again["rows"] == report["rows"] and again["scan"] == report["scan"]

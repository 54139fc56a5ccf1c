"""The lab's report over defense seeds: mean and range, the target check, lab.md, the Pareto plot, stage names."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from clipsan.config.lab import LabConfig
from clipsan.lab.jobs import Job
from clipsan.lab.pareto import PALETTE, PANEL_H, PANEL_W, draw_pareto
from clipsan.lab.plan import make_plan
from clipsan.lab.runner import WorldFiles, stage_jobs
from clipsan.lab.tables import lab_row, render_markdown, target_check


def run(seed: int, ca: float, asr: float | None) -> dict:
    return {"seed": seed, "model": f"m{seed}", "ca": {"1": ca, "10": 1.0}, "asr": None if asr is None else {"1": asr, "10": min(1.0, 2 * asr)}, "n_images": 620}


def rows() -> list[dict]:
    return [
        lab_row("none", "none", [run(0, 0.98, None)]),
        lab_row("badnet", "none", [run(0, 0.97, 0.95)]),
        lab_row("badnet", "ft", [run(0, 0.97, 0.40), run(1, 0.98, 0.60), run(2, 0.96, 0.50)]),
        lab_row("badnet", "abd", [run(0, 0.95, 0.02), run(1, 0.96, 0.04), run(2, 0.94, 0.03)]),  # toll 2 points, ASR 3%: meets
        lab_row("badnet", "cleanclip", [run(0, 0.90, 0.01), run(1, 0.92, 0.01), run(2, 0.91, 0.01)]),  # ASR fine, toll 6: not
        lab_row("sig", "none", [run(0, 0.99, 0.99)]),
        lab_row("sig", "abd", [run(0, 0.98, 0.30), run(1, 0.98, 0.10), run(2, 0.98, 0.20)]),
    ]


def test_a_row_is_the_mean_and_range_over_its_seeds():
    ft = rows()[2]
    assert ft["ca"]["1"] == pytest.approx(0.97) and ft["ca_range"]["1"] == [0.96, 0.98]
    assert ft["asr"]["1"] == pytest.approx(0.5) and ft["asr_range"]["1"] == [0.4, 0.6]
    assert [r["seed"] for r in ft["seeds"]] == [0, 1, 2]
    clean = rows()[0]
    assert clean["asr"] is None and clean["ca"]["1"] == 0.98


def test_target_check_and_pareto_front_per_attack():
    checks = {c["attack"]: c for c in target_check(rows())}
    assert checks["badnet"]["meeting"] == ["abd"]  # cleanclip removes the backdoor but costs 6 points
    assert checks["badnet"]["front"] == ["ft", "abd", "cleanclip"]  # none beats another on both axes
    assert checks["sig"]["meeting"] == [] and checks["sig"]["front"] == ["abd"]


def test_lab_md_shows_ranges_and_links_the_plot(tmp_path):
    payload = {"rows": rows(), "scan": [], "timings": {"total": 1.0}, "settings": {"defense_seeds": [0, 1, 2]}}
    text = render_markdown(payload)
    assert "| badnet | ft | 97.0 (96.0–98.0) | 50.0 (40.0–60.0) |" in text
    assert "| badnet | none | 97.0 | 95.0 |" in text  # the victim: one run, no range
    assert "[pareto.png](pareto.png)" in text and "| sig | 99.0 | none | abd |" in text
    path = draw_pareto(rows(), tmp_path / "pareto.png")
    image = Image.open(path).convert("RGB")
    assert image.width == 2 * PANEL_W and image.height > PANEL_H  # two attacks side by side, legend below
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    first = tuple(int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5))
    assert first in colours  # the first defense's dots are drawn


def test_every_defense_runs_once_per_defense_seed_with_its_own_outputs(tmp_path):
    opts = LabConfig(out=tmp_path, quick=True, seed=5, defense_seeds=3)
    files = WorldFiles(*(tmp_path / n for n in ("train", "defense", "eval", "templates.txt", "world.json")))
    jobs = [j for j in stage_jobs(opts, make_plan(True), files, tmp_path / "clean.safetensors") if j.argv[0] == "purify"]

    def flag(job: Job, name: str) -> str:
        return job.argv[job.argv.index(name) + 1]

    abd = sorted((j for j in jobs if j.name.startswith("abd-badnet")), key=lambda j: j.name)
    assert [j.name for j in abd] == ["abd-badnet", "abd-badnet-s1", "abd-badnet-s2"]
    assert [flag(j, "--seed") for j in abd] == ["5", "6", "7"]  # victims keep --seed 5; defenses 5, 6, 7
    assert len({flag(j, "--out") for j in jobs}) == len({flag(j, "--run-dir") for j in jobs}) == len(jobs) == 3 * 3 * 5
    assert {flag(j, "--seed") for j in stage_jobs(opts, make_plan(True), files, Path("c")) if j.argv[0] == "poison"} == {"5"}

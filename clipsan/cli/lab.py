"""clipsan lab: the whole pipeline on a synthetic world generated on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from clipsan.cli.app import command
from clipsan.cli.options import LAB, RUNTIME, LabAttacks, OutputOptions, Seed, check_device, flag, option, positive
from clipsan.cli.output import emit, note

# Defense seeds per budget: a short high-lr fine-tune amplifies float differences, so one run cannot
# rank defenses (BENCHMARKS.md); the quick budget keeps one to stay within its 15 minutes.
DEFENSE_SEEDS = {"quick": 1, "full": 3}


@command(
    "lab",
    "train, poison, scan, purify and evaluate on a synthetic world: runs anywhere, no download",
    help="Generate the synthetic world, train a clean tiny CLIP from scratch, build victims with `clipsan poison`, "
    "run every defense on every victim, scan the clean model and the victims, evaluate everything, and write "
    "OUT/lab.json and OUT/lab.md (the papers' Table I layout). Run again on the same OUT, it reuses every "
    "finished stage whose inputs and settings match and redoes only the rest.",
    examples=[
        "clipsan lab --quick --out lab/",
        "clipsan lab --out lab-full/",
        "clipsan lab --quick --out smoke/ --attacks badnet --train-pairs 256 --max-steps 4 --eval-per-class 2",
    ],
)
def lab(
    output: OutputOptions,
    quick: Annotated[bool, flag("--quick", "the short budget (about 15 min on 2 CPU cores) instead of the full one", LAB)] = False,
    attacks: LabAttacks = None,
    out: Annotated[Path | None, option("output folder (default: runs/lab-<UTC time>)", LAB, metavar="DIR", file_okay=False)] = None,
    train_pairs: Annotated[int | None, positive("size of the generated training set (default: the budget's)", LAB)] = None,
    max_steps: Annotated[int | None, positive("cap on training steps of every stage (smoke tests)", LAB)] = None,
    eval_per_class: Annotated[int | None, positive("evaluation images per class (default: 20)", LAB)] = None,
    no_cache: Annotated[bool, flag("--no-cache", "retrain the clean model even if a cached one matches", LAB)] = False,
    device: Annotated[str, option("auto | cpu | cuda | cuda:N (default: cpu, the lab is tiny)", RUNTIME, callback=check_device, metavar="DEVICE")] = "cpu",
    seed: Seed = 0,
    parallel: Annotated[int, positive("stage processes run side by side (default: 2)", RUNTIME)] = 2,
    defense_seeds: Annotated[
        int | None,
        positive(
            "run every defense with N seeds (SEED, SEED+1, ...; victims fixed) and report mean and range "
            f"(default: {DEFENSE_SEEDS['quick']} with --quick, {DEFENSE_SEEDS['full']} in the full budget)",
            LAB,
        ),
    ] = None,
) -> None:
    from clipsan.engine.rundir import default_run_dir
    from clipsan.lab import LabOptions, render_markdown, run_lab

    folder = out if out is not None else default_run_dir("lab")
    opts = LabOptions(
        out=folder,
        quick=quick,
        seed=seed,
        parallel=parallel,
        device=device,
        train_pairs=train_pairs,
        max_steps=max_steps,
        eval_per_class=eval_per_class,
        use_cache=not no_cache,
        defense_seeds=defense_seeds or DEFENSE_SEEDS["quick" if quick else "full"],
        attacks=attacks,
    )
    report = run_lab(opts, notes=note)
    emit(report, output.format.value, output.output, render_markdown)
    note(f"wrote {folder / 'lab.json'} and {folder / 'lab.md'}")

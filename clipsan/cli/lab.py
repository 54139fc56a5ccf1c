"""clipsan lab: the whole pipeline on a synthetic world generated on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from clipsan.cli.command import Command
from clipsan.cli.options import DEVICE_HELP, LAB, RUNTIME, OutputOptions, configured, flag, option
from clipsan.cli.output import emit, note
from clipsan.config.lab import DEFENSE_SEEDS, EVAL_PER_CLASS, LAB_FAMILIES, LabConfig
from clipsan.lab.victims import LAB_ATTACKS_FULL, LAB_ATTACKS_QUICK


def _lab(name: str, help: str, default=None, panel: str = LAB) -> object:
    return configured(LabConfig, name, help, panel, default=default, metavar="N")


def lab(
    output: OutputOptions,
    quick: Annotated[bool, flag("--quick", "the short budget (about 15 min on 2 CPU cores) instead of the full one", LAB)] = False,
    family: Annotated[
        str,
        configured(
            LabConfig,
            "family",
            f"the models' family, {' or '.join(LAB_FAMILIES)}: CLIP's softmax loss (clipsan-tiny-rn) or SigLIP's sigmoid loss and "
            "logit bias (clipsan-tiny-siglip-rn, with a tokenizer of the world's words); one family per --out",
            LAB,
            metavar="FAMILY",
        ),
    ] = LabConfig.family,
    attacks: Annotated[
        str | None,
        option(
            f"run only these of the budget's attacks, comma-separated: {', '.join(LAB_ATTACKS_QUICK)}; the full budget also "
            f"{', '.join(a for a in LAB_ATTACKS_FULL if a not in LAB_ATTACKS_QUICK)} (default: all of the budget's)",
            LAB,
            metavar="NAME,...",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        option("output folder (default: runs/lab-<UTC time>; runs/lab-siglip-<UTC time> for --family siglip)", LAB, metavar="DIR", file_okay=False),
    ] = None,
    train_pairs: Annotated[int | None, _lab("train_pairs", "size of the generated training set", "the budget's")] = None,
    max_steps: Annotated[int | None, _lab("max_steps", "cap on training steps of every stage (smoke tests)")] = None,
    eval_per_class: Annotated[int | None, _lab("eval_per_class", "evaluation images per class", EVAL_PER_CLASS)] = None,
    no_cache: Annotated[bool, flag("--no-cache", "retrain the clean model even if a cached one matches", LAB)] = False,
    device: Annotated[str, option(f"{DEVICE_HELP} (default: {LabConfig.device}, the lab is tiny)", RUNTIME, metavar="DEVICE")] = LabConfig.device,
    seed: Annotated[int, configured(LabConfig, "seed", "seed for every random choice", RUNTIME, metavar="SEED")] = LabConfig.seed,
    parallel: Annotated[int, _lab("parallel", "stage processes run side by side", LabConfig.parallel, RUNTIME)] = LabConfig.parallel,
    defense_seeds: Annotated[
        int | None,
        _lab(
            "defense_seeds",
            "run every defense with N seeds (SEED, SEED+1, ...; victims fixed) and report mean and range",
            f"{DEFENSE_SEEDS['quick']} with --quick, {DEFENSE_SEEDS['full']} in the full budget",
        ),
    ] = None,
) -> None:
    from clipsan.engine.rundir import default_run_dir
    from clipsan.lab.runner import run_lab
    from clipsan.lab.tables import render_markdown

    config = LabConfig(
        out=out if out is not None else default_run_dir("lab" if family == "clip" else f"lab-{family}"),
        quick=quick,
        family=family,
        seed=seed,
        parallel=parallel,
        device=device,
        train_pairs=train_pairs,
        max_steps=max_steps,
        eval_per_class=eval_per_class,
        use_cache=not no_cache,
        defense_seeds=defense_seeds,
        attacks=attacks,
    )
    report = run_lab(config, notes=note)
    emit(report, output.format.value, output.output, render_markdown)
    note(f"wrote {config.out / 'lab.json'} and {config.out / 'lab.md'}")


COMMAND = Command(
    "lab",
    "train, poison, scan, purify and evaluate on a synthetic world: runs anywhere, no download",
    "Generate the synthetic world, train a clean tiny CLIP (or, with --family siglip, a tiny SigLIP) from scratch, build victims with `clipsan poison`, "
    "run every defense on every victim, scan the clean model and the victims, evaluate everything, and write "
    "OUT/lab.json and OUT/lab.md (the papers' Table I layout). Run again on the same OUT, it reuses every "
    "finished stage whose inputs and settings match and redoes only the rest.",
    (
        "clipsan lab --quick --out lab/",
        "clipsan lab --out lab-full/",
        "clipsan lab --quick --family siglip --out lab-siglip/",
    ),
    lab,
)

"""clipsan purify: remove a backdoor by fine-tuning on clean pairs with a published recipe."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated

import typer

from clipsan.cli.command import Command
from clipsan.cli.groups import Panel
from clipsan.cli.options import (
    ABDOptions,
    Arch,
    CleanCLIPOptions,
    CleanerCLIPOptions,
    DataOptions,
    EvidenceOptions,
    Method,
    Model,
    OutFormat,
    OutputOptions,
    PAROptions,
    PatchOptions,
    RunDirOptions,
    RuntimeOptions,
    SpeedOptions,
    TrainingOptions,
    option,
    recipe_config,
    training_job,
)
from clipsan.cli.output import emit, note, training_lines
from clipsan.config import PurifyConfig
from clipsan.config.recipes import RECIPE_CONFIGS
from clipsan.reports import recall_text

# Which methods each group of recipe options belongs to; given under another method, they are refused.
METHOD_GROUPS = {"cleanclip": ("cleanclip", "cleanerclip"), "cleanerclip": ("cleanerclip",), "abd": ("abd",), "patch": ("abd",), "par": ("par",)}


def render(report: dict) -> str:
    return "\n".join([f"purified with {report['method']}: {report['output']}", *training_lines(report), *utility_lines(report)])


def utility_lines(report: dict) -> list[str]:
    """The held-out split and the retrieval on it, before and after."""
    holdout, utility = report["holdout"], report["utility"]
    if utility is None:
        return [f"  nothing held out of {holdout['usable']} usable pairs: no utility check"]
    corrupt = f" ({utility['corrupt_image']} unreadable images left out)" if utility["corrupt_image"] else ""
    return [
        f"  held out {holdout['pairs']} of {holdout['usable']} usable pairs, never trained on; retrieval on {utility['pairs']}{corrupt}:",
        f"    before: {recall_text(utility['before'])}",
        f"    after:  {recall_text(utility['after'])}",
    ]


def _refuse_foreign_options(ctx: typer.Context, method: str, groups: dict) -> None:
    for group_name, group in groups.items():
        allowed = METHOD_GROUPS[group_name]
        if method in allowed:
            continue
        for f in fields(group):
            if ctx.get_parameter_source(f.name).name != "DEFAULT":
                flag = "--" + f.name.replace("_", "-")
                raise typer.BadParameter(f"{flag} applies to --method {' and '.join(allowed)}, not {method}", ctx=ctx, param_hint="--method")


def purify(
    ctx: typer.Context,
    model: Model,
    *,
    method: Method,
    out: Annotated[
        str | None, option("where to write the purified model (default: RUN_DIR/purify.safetensors, or the folder RUN_DIR/purify)", metavar="PATH")
    ] = None,
    out_format: OutFormat = PurifyConfig.out_format,
    arch: Arch = None,
    data: DataOptions,
    evidence: EvidenceOptions,
    training: TrainingOptions,
    cleanclip: Annotated[CleanCLIPOptions, Panel("--method cleanclip, cleanerclip")],
    cleanerclip: Annotated[CleanerCLIPOptions, Panel("--method cleanerclip")],
    abd: Annotated[ABDOptions, Panel("--method abd")],
    patch: Annotated[PatchOptions, Panel("--method abd")],
    par: Annotated[PAROptions, Panel("--method par")],
    run: RunDirOptions,
    runtime: RuntimeOptions,
    speed: SpeedOptions,
    output: OutputOptions,
) -> None:
    from clipsan import api

    groups = {"cleanclip": cleanclip, "cleanerclip": cleanerclip, "abd": abd, "patch": patch, "par": par}
    _refuse_foreign_options(ctx, method, groups)
    recipe = recipe_config(method, **groups)
    config = api.PurifyConfig(
        recipe=recipe,
        evidence=evidence.config(),
        training=training.config(recipe.paper_schedule, run, runtime, speed),
        **training_job(model, out, out_format, arch, data, run, runtime),
    )
    report = api.purify(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)


COMMAND = Command(
    "purify",
    "fine-tune a suspect checkpoint on clean image-caption pairs to remove a backdoor",
    "Fine-tune MODEL on clean image-caption pairs with one of the published defense recipes and write the "
    "purified model in MODEL's layout (--out-format). Training defaults follow the recipe's paper: "
    + "; ".join(f"{name} {cls.paper_schedule.describe()}" for name, cls in RECIPE_CONFIGS.items())
    + ".",
    (
        "clipsan purify suspect.safetensors --method abd --data cc250k/",
        "clipsan purify openai-clip-vit-base-patch32/ --method cleanclip --data cc250k/ --out purified/",
        "clipsan purify suspect.safetensors --method ft --data cc250k/ --run-dir runs/purify-1 --resume",
    ),
    purify,
)

"""clipsan purify: remove a backdoor by fine-tuning on clean pairs with a published recipe."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated

import typer

from clipsan.cli import convert
from clipsan.cli.app import command
from clipsan.cli.groups import Panel
from clipsan.cli.options import (
    ABDOptions,
    Arch,
    CleanCLIPOptions,
    CleanerCLIPOptions,
    DataOptions,
    Method,
    Model,
    OutFormat,
    OutFormatOpt,
    OutputOptions,
    PatchOptions,
    RunDirOptions,
    RuntimeOptions,
    SpeedOptions,
    TrainingOptions,
    option,
)
from clipsan.cli.output import emit, note, training_lines
from clipsan.recipes.config import RECIPE_CONFIGS

# Which methods each group of recipe options belongs to; given under another method, they are refused.
METHOD_GROUPS = {"cleanclip": ("cleanclip", "cleanerclip"), "cleanerclip": ("cleanerclip",), "abd": ("abd",), "patch": ("abd",)}


def _schedules() -> str:
    rows = [
        f"{name} {s.epochs} epochs, batch {s.batch_size}, lr {s.lr:g}, {s.warmup_steps} warmup steps"
        for name, s in ((name, cls.paper_schedule) for name, cls in RECIPE_CONFIGS.items())
    ]
    return "; ".join(rows)


def render(report: dict) -> str:
    return "\n".join([f"purified with {report['method']}: {report['output']}", *training_lines(report)])


def _refuse_foreign_options(ctx: typer.Context, method: str, groups: dict) -> None:
    for group_name, group in groups.items():
        allowed = METHOD_GROUPS[group_name]
        if method in allowed:
            continue
        for f in fields(group):
            if ctx.get_parameter_source(f.name).name != "DEFAULT":
                flag = "--" + f.name.replace("_", "-")
                raise typer.BadParameter(f"{flag} applies to --method {' and '.join(allowed)}, not {method}", ctx=ctx, param_hint="--method")


@command(
    "purify",
    "fine-tune a suspect checkpoint on clean image-caption pairs to remove a backdoor",
    help="Fine-tune MODEL on clean image-caption pairs with one of the published defense recipes and write the "
    f"purified model in MODEL's layout (--out-format). Training defaults follow the recipe's paper: {_schedules()}.",
    examples=[
        "clipsan purify suspect.safetensors --method abd --data cc250k/",
        "clipsan purify openai-clip-vit-base-patch32/ --method cleanclip --data cc250k/ --out purified/",
        "clipsan purify suspect.safetensors --method ft --data cc250k/ --run-dir runs/purify-1 --resume",
    ],
)
def purify(
    ctx: typer.Context,
    model: Model,
    *,
    method: Annotated[Method, option("defense recipe")],
    out: Annotated[
        str | None, option("where to write the purified model (default: RUN_DIR/purify.safetensors, or the folder RUN_DIR/purify)", metavar="PATH")
    ] = None,
    out_format: OutFormatOpt = OutFormat.auto,
    arch: Arch = None,
    data: DataOptions,
    training: TrainingOptions,
    cleanclip: Annotated[CleanCLIPOptions, Panel("--method cleanclip, cleanerclip")],
    cleanerclip: Annotated[CleanerCLIPOptions, Panel("--method cleanerclip")],
    abd: Annotated[ABDOptions, Panel("--method abd")],
    patch: Annotated[PatchOptions, Panel("--method abd")],
    run: RunDirOptions,
    runtime: RuntimeOptions,
    speed: SpeedOptions,
    output: OutputOptions,
) -> None:
    from clipsan import api

    _refuse_foreign_options(ctx, method.value, {"cleanclip": cleanclip, "cleanerclip": cleanerclip, "abd": abd, "patch": patch})
    recipe = convert.recipe_config(method.value, cleanclip, cleanerclip, abd, patch)
    job = convert.training_job(model, out, arch, data, training, run, runtime, speed, recipe.paper_schedule, out_format=out_format.value)
    config = api.PurifyConfig(recipe=recipe, **job)
    report = api.purify(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)

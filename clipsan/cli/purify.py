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
    lines = [f"purified with {report['method']}: {report['output']}", *training_lines(report), *utility_lines(report)]
    return "\n".join(lines + verification_lines(report["verification"]))


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


def verification_lines(verification: dict) -> list[str]:
    """The backdoor check: each signal before and after beside its threshold, the utility guard, the verdict."""
    if verification["verdict"] == "not-run":
        return [f"  backdoor check: not run ({verification['reason']})"]
    probes, guard = verification["probes"], verification["utility_guard"]
    before = verification["before"]
    source = f"from --scan-report {before['scan_report']}" if before["source"] == "scan-report" else "measured"
    lines = [
        f"  backdoor check (clipsan scan's signals, {verification['budget']} budget, {verification['steps']} steps, seed {verification['seed']}, "
        f"{probes['count']} held-out images as probes; before: {source}):",
        f"    {'signal':<30} {'before':>7}  {'after':>7}   threshold",
    ]
    for row in verification["signals"]:
        name = f"{row['name']} ({row['statistic_name']})" if row["statistic_name"] else row["name"]
        counted = "" if row["counted"] else ", not counted"
        lines.append(
            f"    {name:<30} {_statistic(row['before'], row['fired_before'])} {_statistic(row['after'], row['fired_after'])}  "
            f"fires {row['fires_when']} {row['threshold']:.4f} ({row['threshold_source']}{counted})"
        )
    lines.append(
        f"    {'held-out R@1 (i2t+t2i)/2':<30} {_statistic(guard['before'])} {_statistic(guard['after'])}  "
        f"may drop {guard['max_drop']:g}: {'within' if guard['within'] else 'NOT within'}"
    )
    lines.append(f"    (* fired)  verdict: {verification['verdict']}: {verification['statement']}")
    if verification["outcome"]:
        lines.append(f"    --until-clean: {verification['outcome']}")
    if verification["passed"]:
        lines.append("    the written model passes the check")
    elif verification["required"]:
        lines.append("    the written model does not pass the check: exit 1")
    else:
        lines.append("    the written model does not pass the check (--until-clean or --require-clean would exit 1)")
    lines.append(f"    {verification['checks']} checks, {verification['seconds']:.1f} s; history: {verification['history']}")
    return lines


def _statistic(value: float | None, fired: bool | None = None) -> str:
    """A figure in a column of 7, and * after it if its signal fired."""
    return f"{'n/a' if value is None else f'{value:.4f}':>7}{'*' if fired else ' '}"


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
) -> int:
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
    return report.exit_code


COMMAND = Command(
    "purify",
    "fine-tune a suspect checkpoint on clean image-caption pairs to remove a backdoor",
    "Fine-tune MODEL on clean image-caption pairs with one of the published defense recipes and write the "
    "purified model in MODEL's layout (--out-format). Training defaults follow the recipe's paper: "
    + "; ".join(f"{name} {cls.paper_schedule.describe()}" for name, cls in RECIPE_CONFIGS.items())
    + ".",
    (
        "clipsan purify suspect.safetensors --method abd --data cc250k/",
        "clipsan purify suspect.safetensors --method ft --data cc250k/ --run-dir runs/purify-1 --resume",
        "clipsan purify suspect.safetensors --method abd --data cc250k/ --until-clean --scan-report intake-scan.json || echo 'evidence left'",
    ),
    purify,
)

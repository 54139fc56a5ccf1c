"""clipsan craft-adv: train ABD's adversarial patch generator (AdvCLIP + backdoor loss)."""

from __future__ import annotations

from typing import Annotated

from clipsan.cli.command import Command
from clipsan.cli.groups import Panel, fill
from clipsan.cli.options import (
    Arch,
    CraftTrainingOptions,
    DataOptions,
    Model,
    OutputOptions,
    PatchOptions,
    RunDirOptions,
    RuntimeOptions,
    option,
    path,
    show_progress,
)
from clipsan.cli.output import emit, note, training_lines
from clipsan.config import CraftConfig
from clipsan.config.checks import flags_as


def render(report: dict) -> str:
    box = report["patch_box"]
    return "\n".join(
        [
            f"crafted with {report['objective']} (bd weight {report['bd_weight']:g}): {report['output']}",
            f"  patch {box['side']}x{box['side']} px at x={box['x']}, y={box['y']} of {box['image_size']} px images: {report['patch_png']}",
            *training_lines(report),
        ]
    )


def craft_adv(
    model: Model,
    *,
    out: Annotated[
        str | None, option("where to write the generator .safetensors (default: RUN_DIR/generator.safetensors); the patch PNG goes next to it", metavar="FILE")
    ] = None,
    arch: Arch = None,
    data: DataOptions,
    patch: Annotated[PatchOptions, Panel("Patch and losses")],
    training: CraftTrainingOptions,
    run: RunDirOptions,
    runtime: RuntimeOptions,
    output: OutputOptions,
) -> None:
    from clipsan import api

    with flags_as(CraftConfig.CRAFT_ADV_FLAGS):  # craft-adv spells the crafting run's length as --epochs, ...
        craft = patch.craft(training.epochs, training.batch_size, training.max_steps, training.lr)
    given = {"model": model, "data": data.config(), "craft": craft, "out": out, "arch": arch, "run_dir": path(run.run_dir)}
    config = fill(api.CraftAdvConfig, patch, run, runtime, progress=show_progress(runtime.progress), **given)
    report = api.craft_adv(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)


COMMAND = Command(
    "craft-adv",
    "train ABD's adversarial patch generator (AdvCLIP + backdoor loss) against a suspect model",
    "Train an AdvCLIP patch generator against MODEL on clean image-caption pairs, with ABD's backdoor loss when "
    "--reference (a clean CLIP of the same input size) is given. Writes the generator (.safetensors, usable as "
    "`purify --method abd --generator FILE` and as an eval trigger `patch:FILE@X,Y`) and the patch as PNG next to it.",
    (
        "clipsan craft-adv suspect.safetensors --data cc250k/ --reference base.safetensors --out gen.safetensors",
        "clipsan purify suspect.safetensors --method abd --data cc250k/ --generator gen.safetensors",
        "clipsan eval suspect.safetensors --data val/ --trigger patch:gen.safetensors@172,172",
    ),
    craft_adv,
)

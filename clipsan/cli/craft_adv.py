"""clipsan craft-adv: train ABD's adversarial patch generator (AdvCLIP + backdoor loss)."""

from __future__ import annotations

from typing import Annotated

from clipsan.cli import convert
from clipsan.cli.app import command
from clipsan.cli.groups import Panel
from clipsan.cli.options import Arch, CraftTrainingOptions, DataOptions, Model, OutputOptions, PatchOptions, RunDirOptions, RuntimeOptions, option
from clipsan.cli.output import emit, note, training_lines


def render(report: dict) -> str:
    box = report["patch_box"]
    return "\n".join(
        [
            f"crafted with {report['objective']} (bd weight {report['bd_weight']:g}): {report['output']}",
            f"  patch {box['side']}x{box['side']} px at x={box['x']}, y={box['y']} of {box['image_size']} px images: {report['patch_png']}",
            *training_lines(report),
        ]
    )


@command(
    "craft-adv",
    "train ABD's adversarial patch generator (AdvCLIP + backdoor loss) against a suspect model",
    help="Train an AdvCLIP patch generator against MODEL on clean image-caption pairs, with ABD's backdoor loss when "
    "--reference (a clean CLIP of the same input size) is given. Writes the generator (.safetensors, usable as "
    "`purify --method abd --generator FILE` and as an eval trigger `patch:FILE@X,Y`) and the patch as PNG next to it.",
    examples=[
        "clipsan craft-adv suspect.safetensors --data cc250k/ --reference base.safetensors --out gen.safetensors",
        "clipsan purify suspect.safetensors --method abd --data cc250k/ --generator gen.safetensors",
        "clipsan eval suspect.safetensors --data val/ --trigger patch:gen.safetensors@172,172",
    ],
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

    convert.check_resume(run)
    craft = convert.craft_config(patch, epochs=training.epochs, batch_size=training.batch_size, lr=training.lr, max_steps=training.max_steps)
    given = {"model": model, "data": convert.caption_data(data), "craft": craft, "out": out, "arch": arch, "progress": convert.progress(runtime)}
    config = convert.fill(api.CraftAdvConfig, patch, run, runtime, **given)
    report = api.craft_adv(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)

"""clipsan poison: build a backdoored victim from a clean model (for checking defenses end to end)."""

from __future__ import annotations

from typing import Annotated

from clipsan.cli.command import Command
from clipsan.cli.options import (
    Arch,
    AttackOptions,
    DataOptions,
    Model,
    OutFormat,
    OutputOptions,
    RunDirOptions,
    RuntimeOptions,
    SpeedOptions,
    TrainingOptions,
    option,
    training_job,
)
from clipsan.cli.output import emit, note, training_lines
from clipsan.config import PoisonConfig
from clipsan.config.attacks import BADCLIP, POISON_SCHEDULE


def _figure(value: float | None) -> str:
    return "unrecorded" if value is None else f"{value:.4f}"


def render(report: dict) -> str:
    trigger = ", ".join(f"{k}={v}" for k, v in report["trigger"].items() if v is not None)
    lines = [
        f"victim written: {report['output']}",
        f"  trigger {trigger}; target {report['target']!r}",
        f"  poisoned {report['poisoned']} of {report['eligible']} pairs (rate {report['rate']:g}, {report['caption_mode']} captions)",
        *training_lines(report),
    ]
    if report.get("badclip"):
        b = report["badclip"]
        how = "reused" if b["reused"] else "optimized"
        objective = f"{_figure(b['loss_before'])} -> {_figure(b['loss_after'])}"
        lines.insert(2, f"  badclip patch {b['side']}x{b['side']} {how} ({b['objective']}): objective {objective}; {b['png']}")
    return "\n".join(lines)


def poison(
    model: Model,
    *,
    out: Annotated[str | None, option("where to write the victim (default: RUN_DIR/poison.safetensors, or the folder RUN_DIR/poison)", metavar="PATH")] = None,
    out_format: OutFormat = PoisonConfig.out_format,
    arch: Arch = None,
    attack: AttackOptions,
    data: DataOptions,
    training: TrainingOptions,
    run: RunDirOptions,
    runtime: RuntimeOptions,
    speed: SpeedOptions,
    output: OutputOptions,
) -> None:
    from clipsan import api

    config = api.PoisonConfig(
        attack=attack.config(),
        training=training.config(POISON_SCHEDULE, run, runtime, speed),
        **training_job(model, out, out_format, arch, data, run, runtime),
    )
    report = api.poison(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)


COMMAND = Command(
    "poison",
    "fine-tune a clean checkpoint on partly poisoned data: a backdoored victim for testing defenses",
    "Fine-tune MODEL on DIR where exactly round(rate*N) pairs, chosen from --seed, carry the trigger and a caption "
    "naming the target (a random OpenAI ImageNet template, or natural captions mentioning it). The victim's metadata "
    "records the trigger, so `clipsan eval VICTIM --trigger from-metadata` reproduces the attack. Default schedule, the "
    f"papers' poisoning stage: {POISON_SCHEDULE.describe()}.",
    (
        "clipsan poison clean.safetensors --data cc250k/ --trigger badnet --target banana --rate 0.003 --out victim.safetensors",
        f"clipsan poison clean.safetensors --data cc250k/ --trigger {BADCLIP} --out badclip-victim.safetensors",
        "clipsan eval victim.safetensors --data imagenet-val/ --trigger from-metadata",
    ),
    poison,
)

"""clipsan poison: build a backdoored victim from a clean model (for checking defenses end to end)."""

from __future__ import annotations

from typing import Annotated

from clipsan.attacks.config import POISON_SCHEDULE, AttackConfig, BadClipConfig
from clipsan.cli import convert
from clipsan.cli.app import command
from clipsan.cli.options import (
    Arch,
    AttackOptions,
    DataOptions,
    Model,
    OutFormat,
    OutFormatOpt,
    OutputOptions,
    RunDirOptions,
    RuntimeOptions,
    SpeedOptions,
    TrainingOptions,
    option,
)
from clipsan.cli.output import emit, note, training_lines

_S = POISON_SCHEDULE


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


def attack_config(attack: AttackOptions) -> AttackConfig:
    badclip = BadClipConfig(
        epochs=attack.patch_epochs, lr=attack.patch_lr, batch_size=attack.patch_batch_size, images=attack.patch_images, objective=attack.badclip_objective.value
    )
    return convert.fill(AttackConfig, attack, badclip=badclip)


@command(
    "poison",
    "fine-tune a clean checkpoint on partly poisoned data: a backdoored victim for testing defenses",
    help="Fine-tune MODEL on DIR where exactly round(rate*N) pairs, chosen from --seed, carry the trigger and a caption "
    "naming the target (a random OpenAI ImageNet template, or natural captions mentioning it). The victim's metadata "
    "records the trigger, so `clipsan eval VICTIM --trigger from-metadata` reproduces the attack. Default schedule, the "
    f"papers' poisoning stage: {_S.epochs} epochs, batch {_S.batch_size}, lr {_S.lr:g}, {_S.warmup_steps} warmup steps.",
    examples=[
        "clipsan poison clean.safetensors --data cc250k/ --trigger badnet --target banana --rate 0.003 --out victim.safetensors",
        "clipsan poison clean.safetensors --data cc250k/ --trigger badclip --out badclip-victim.safetensors",
        "clipsan eval victim.safetensors --data imagenet-val/ --trigger from-metadata",
    ],
)
def poison(
    model: Model,
    *,
    out: Annotated[str | None, option("where to write the victim (default: RUN_DIR/poison.safetensors, or the folder RUN_DIR/poison)", metavar="PATH")] = None,
    out_format: OutFormatOpt = OutFormat.auto,
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

    job = convert.training_job(model, out, arch, data, training, run, runtime, speed, POISON_SCHEDULE, out_format=out_format.value)
    config = api.PoisonConfig(attack=attack_config(attack), **job)
    report = api.poison(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)

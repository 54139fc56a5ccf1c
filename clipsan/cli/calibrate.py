"""clipsan calibrate: scan thresholds from checkpoints the user trusts, for scan --calibration."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsan.cli.command import Command
from clipsan.cli.options import MODEL_HELP, Arch, CalibrateOptions, Device, OutputOptions
from clipsan.cli.output import emit, note
from clipsan.config import CalibrateConfig
from clipsan.scan.thresholds import STATISTIC_NAMES


def render(report: dict) -> str:
    document = report["calibration"]
    budget = document["budget"]
    lines = [
        f"{report['out']}: {len(document['models'])} trusted models x {len(document['seeds'])} seeds, "
        f"{budget['probes']} probes, {budget['steps']} steps, {report['seconds']:.0f} s"
    ]
    for entry in document["entries"]:
        lines.append(f"  {entry['family']} {entry['arch']} {entry['image_size']} px")
        for name, s in entry["signals"].items():
            if s["threshold"] is None:
                lines.append(f"    {name:<22} no collapsing trigger on any trusted model ({s['failed']} scans): scan keeps the lab's threshold")
                continue
            failed = f", {s['failed']} found no collapse" if s["failed"] else ""
            lines.append(
                f"    {name:<22} {STATISTIC_NAMES[name]:<4} clean min {s['minimum']:.4f} over {len(s['statistics'])} scans{failed}; "
                f"threshold {s['threshold']:.4f} ({document['rule']['factor']:g} x min)"
            )
    lines.append(f"  use: clipsan scan MODEL --calibration {report['out']}")
    return "\n".join(lines)


def calibrate(
    models: Annotated[list[str], typer.Argument(metavar="TRUSTED", help=MODEL_HELP + "; models you trust to be clean", show_default=False)],
    *,
    arch: Arch = None,
    calibration: CalibrateOptions,
    device: Device = CalibrateConfig.device,
    output: OutputOptions,
) -> None:
    from clipsan import api

    config = calibration.config(models=tuple(models), arch=arch, device=device)
    report = api.calibrate(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)


COMMAND = Command(
    "calibrate",
    "scan thresholds from models you trust, for scan --calibration",
    "Scan each TRUSTED checkpoint as clipsan scan would, with seeds 0 .. --seeds - 1, and write to --out, per model "
    "family, architecture and input size, every signal's statistics and the threshold derived from them: 0.7 x the "
    "smallest statistic of any trusted model (the rule the built-in thresholds were calibrated with on the lab's models). "
    "With --reference (the base the trusted models were fine-tuned from), reference-divergence too. clipsan scan "
    "--calibration FILE then takes its thresholds from the entry matching each MODEL (the others keep the built-in "
    "ones and the report says so). Use the same --data, --budget, --probes and --steps for calibrate and scan: the "
    "statistics move with them. Exit 2 if any TRUSTED model cannot be read.",
    (
        "clipsan calibrate vetted/*.safetensors --out calibration.json",
        "clipsan calibrate vetted-a.safetensors vetted-b.safetensors --data probes/ --seeds 5 --out calibration.json",
        "clipsan calibrate tuned-1.safetensors tuned-2.safetensors --reference base.safetensors --out calibration.json --format json",
    ),
    calibrate,
)

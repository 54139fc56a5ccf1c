"""clipsan eval: zero-shot clean accuracy (CA@k) and attack success rate (ASR@k)."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsan.cli.command import Command
from clipsan.cli.options import MODEL_HELP, Arch, Device, EvalOptions, OutputOptions, Precision, Workers
from clipsan.cli.output import emit, note
from clipsan.config import EvalConfig


def render(report: dict) -> str:
    ks = report["topk"]
    has_asr = any(row["asr"] for row in report["models"])
    header = ["model"] + [f"CA@{k}" for k in ks] + ([f"ASR@{k}" for k in ks] if has_asr else []) + ["images"]
    rows = []
    for row in report["models"]:
        cells = [row["model"]] + [f"{row['ca'][str(k)]:.4f}" for k in ks]
        if has_asr:
            cells += [f"{row['asr'][str(k)]:.4f}" if row["asr"] else "-" for k in ks]
        cells.append(str(row["n_images"]) + (f" / {row['n_asr_images']} triggered" if row["asr"] else ""))
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)


def evaluate(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)],
    *,
    arch: Arch = None,
    eval: EvalOptions,
    output: OutputOptions,
    device: Device = EvalConfig.device,
    precision: Precision = EvalConfig.precision,
    workers: Workers = None,
) -> None:
    from clipsan import api

    config = eval.config(models=tuple(models), arch=arch, workers=workers, device=device, precision=precision)
    report = api.evaluate(config, notes=note)
    emit(report.to_json(), output.format.value, output.output, render)


COMMAND = Command(
    "eval",
    "zero-shot clean accuracy and attack success rate, several models side by side",
    "Zero-shot classify a labelled image set with each MODEL. CA@k: fraction of clean images whose class is in "
    "the top k. ASR@k (with --trigger): among images whose class is not the target, the fraction whose top k "
    "contains the target once the trigger is applied.",
    (
        "clipsan eval suspect.safetensors --data imagenet-val/ --trigger badnet --target banana",
        "clipsan eval victim.safetensors purified.safetensors --data imagenet-val/ --trigger from-metadata --format json",
        "clipsan eval model.safetensors --data val/ --templates simple --topk 1,5 --output eval.json --format json",
    ),
    evaluate,
)

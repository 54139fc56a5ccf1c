"""clipsan scan: trigger-agnostic backdoor evidence for one or more checkpoints (exit 1 when found)."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsan import strict_json
from clipsan.cli.command import Command
from clipsan.cli.options import MODEL_HELP, OUTPUT, RUNTIME, Arch, Device, Output, ScanFormat, ScanOptions, ScanPrecision, configured, option
from clipsan.cli.output import emit, note
from clipsan.config import ScanConfig
from clipsan.scan.thresholds import RELATIVE, STATISTIC_NAMES


def render_signal(s: dict) -> str:
    """One line per signal: its statistic, the comparison that decided and its threshold's source."""
    mark = ("FIRED" if s["counted"] else "fired (supporting evidence, not counted)") if s["fired"] else "ok"
    head = f"  {s['name']:<22} {STATISTIC_NAMES.get(s['name'], 'value'):<5} {s['statistic']:.4f}  "
    absolute = f"{s['threshold']:.4f} ({s['threshold_source']})"
    if s["rule"] == RELATIVE:
        alone = "would fire" if s["absolute_would_fire"] else "would not fire"
        base = "; the reference itself is below it" if s["reference_below_threshold"] else ""
        return (
            head + f"/ reference {s['reference_statistic']:.4f} = ratio {s['ratio']:.3f}, fires below {s['ratio_threshold']:.3f} "
            f"({s['ratio_threshold_source']})  {mark}  [absolute {absolute} alone {alone}{base}]"
        )
    return head + f"fires {s['fires_when']} {absolute}  {mark}" + (f"  [{s['rule_note']}]" if "rule_note" in s else "")


def render_model(report: dict) -> list[str]:
    verdict = "BACKDOOR EVIDENCE" if report["backdoor"] else "no backdoor evidence"
    lines = [f"{report['model']}: {verdict}", f"  sha256 {report['sha256']}, arch {report['arch']} ({report['arch_source']}), {report['image_size']} px"]
    lines += [render_signal(s) for s in report["signals"]]
    calibration = report["calibration"]
    if calibration is not None:
        lines.append(f"  calibration: {calibration['entry']} from {calibration['file']}" if calibration["used"] else f"  calibration: {calibration['note']}")
        lines += [f"  calibration: {difference}" for difference in calibration["differences"]]
    lines += [f"  warning: {warning}" for warning in report["warnings"]]
    t = report["target"]
    others = ", ".join(f"{c['label']} {c['similarity']:.3f}" for c in t["candidates"][1:4])
    lines.append(f"  likely target: {t['label']!r} (cosine {t['similarity']:.3f}, {t['source']}; next: {others})")
    lines.append(f"  inverted trigger: {report['trigger']['png']}")
    lines.append(f"  probes: {report['probes']['description']}")
    if report["probes"]["synthetic"]:
        lines.append("  note: probed with synthetic world images; pass --data DIR with images like the model's inputs for a sharper scan")
    lines.append(f"  {report['budget']} budget, {report['seconds']:.1f} s, run directory {report['run_dir']}")
    return lines


def render(document: dict) -> str:
    lines = []
    for row in document["models"]:
        lines += render_model(row)
    for error in document["errors"]:
        lines.append(f"{error['model']}: NOT SCANNED: {error['error']}")
    if len(document["models"]) + len(document["errors"]) > 1:
        s = document["summary"]
        lines.append(f"{s['models']} models: {s['flagged']} with backdoor evidence, {s['scanned'] - s['flagged']} without, {s['errors']} not readable")
    return "\n".join(lines)


def scan(
    models: Annotated[list[str], typer.Argument(metavar="MODEL", help=MODEL_HELP + "; several are scanned one at a time", show_default=False)],
    *,
    arch: Arch = None,
    scan: ScanOptions,
    device: Device = ScanConfig.device,
    precision: ScanPrecision = ScanConfig.precision,
    seed: Annotated[int, configured(ScanConfig, "seed", "seed for probes and the inversion", RUNTIME, metavar="SEED")] = ScanConfig.seed,
    format: Annotated[ScanFormat, option("report format on stdout (default: text)", OUTPUT)] = ScanFormat.text,
    output: Output = None,
) -> int:
    from clipsan import api
    from clipsan.scan.sarif import to_sarif

    config = scan.config(models=tuple(models), arch=arch, device=device, precision=precision, seed=seed)
    report = api.scan(config, notes=note)
    as_text = render if format.value == "text" else (lambda r: strict_json.dumps(to_sarif(r), indent=2, sort_keys=True))
    emit(report.to_json(), "text" if format.value in ("text", "sarif") else "json", output, as_text)
    return report.exit_code


COMMAND = Command(
    "scan",
    "say whether checkpoints carry a backdoor (exit 1 if any does): a gate for model intake",
    help="For each MODEL, one after another: invert a trigger on its image encoder (DECREE): the smallest mask, as a "
    "fraction PL1 of the image, that collapses the embeddings of clean probe images; and the smallest universal additive "
    "perturbation (its L-inf budget) that does, which whole-image triggers make small. Backdoored if either is below a "
    "threshold calibrated on clean models (each threshold names its source: lab-32px, lab-64px, extrapolated-from-64px "
    "above 64 px, user:FILE with --calibration, user:FLAG). With --reference (the base MODEL was fine-tuned from), both "
    "also run on the reference, once, and MODEL is judged by the ratio MODEL / reference instead (reference-relative: no "
    "calibration at MODEL's size needed; what to pass for a 224-px model); and the smallest stamp on which MODEL's "
    "features depart from the reference's is found. Names the likely target (class names, noun bank) and flags a "
    "collapse point that matches a caption as well as natural images do. Saves the inverted triggers as PNG. One report, "
    "a row per MODEL. Exit 0: no backdoor evidence; 1: backdoor evidence in any MODEL; 2: bad input, or any MODEL could "
    "not be read (the others are still scanned and reported).",
    examples=(
        "clipsan scan suspect.safetensors --reference base.safetensors --data cc250k/ --format sarif --output scan.sarif || echo rejected",
        "clipsan scan incoming/*.safetensors --calibration calibration.json --format json --output intake.json",
        "clipsan scan suspect.safetensors --reference base.safetensors --budget full --format json",
    ),
    body=scan,
)

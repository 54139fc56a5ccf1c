"""clipsan scan: trigger-agnostic backdoor evidence for a CLIP checkpoint (exit 1 when found)."""

from __future__ import annotations

from typing import Annotated

from clipsan import strict_json
from clipsan.cli import convert
from clipsan.cli.app import command
from clipsan.cli.options import OUTPUT, Arch, Device, Model, Output, Precision, ScanFormat, ScanOptions, ScanPrecisionOpt, option
from clipsan.cli.output import emit, note

STATISTIC_NAMES = {"below": "PL1", "above": "ratio"}


def render(report: dict) -> str:
    verdict = "BACKDOOR EVIDENCE" if report["backdoor"] else "no backdoor evidence"
    lines = [f"{report['model']}: {verdict}", f"  sha256 {report['sha256']}, arch {report['arch']} ({report['arch_source']}), {report['image_size']} px"]
    for s in report["signals"]:
        mark = ("FIRED" if s["counted"] else "fired (supporting evidence, not counted)") if s["fired"] else "ok"
        lines.append(
            f"  {s['name']:<21} {STATISTIC_NAMES[s['fires_when']]:<5} {s['statistic']:.4f}  "
            f"fires {s['fires_when']} {s['threshold']:.4f} ({s['threshold_source']})  {mark}"
        )
    t = report["target"]
    others = ", ".join(f"{c['label']} {c['similarity']:.3f}" for c in t["candidates"][1:4])
    lines.append(f"  likely target: {t['label']!r} (cosine {t['similarity']:.3f}, {t['source']}; next: {others})")
    lines.append(f"  inverted trigger: {report['trigger']['png']}")
    lines.append(f"  probes: {report['probes']['description']}")
    if report["probes"]["synthetic"]:
        lines.append("  note: probed with synthetic world images; pass --data DIR with images like the model's inputs for a sharper scan")
    lines.append(f"  {report['budget']} budget, {report['seconds']:.1f} s, run directory {report['run_dir']}")
    return "\n".join(lines)


@command(
    "scan",
    "say whether a checkpoint carries a backdoor (exit 1 if it does): a gate for model intake",
    help="Invert a trigger on MODEL's image encoder (DECREE): the smallest mask, as a fraction PL1 of the image, that "
    "collapses the embeddings of clean probe images. Backdoored if PL1 is below a threshold calibrated on clean models. "
    "With --reference, also find the smallest stamp on which MODEL's features depart from the reference's. Names the "
    "likely target (class names, noun bank) and flags a collapse point that matches a caption as well as natural images "
    "do. Saves the inverted trigger as PNG. Exit 0: no backdoor evidence; 1: backdoor evidence; 2: bad input.",
    examples=[
        "clipsan scan suspect.safetensors --data cc250k/ --format sarif --output scan.sarif || echo rejected",
        "clipsan scan suspect.safetensors --reference base.safetensors --budget full --format json",
        "clipsan scan suspect.safetensors",
    ],
)
def scan(
    model: Model,
    *,
    arch: Arch = None,
    scan: ScanOptions,
    device: Device = "auto",
    precision: ScanPrecisionOpt = Precision.auto,
    seed: Annotated[int, option("seed for probes and the inversion (default: 0)", "Runtime")] = 0,
    format: Annotated[ScanFormat, option("report format on stdout (default: text)", OUTPUT)] = ScanFormat.text,
    output: Output = None,
) -> int:
    from clipsan import api
    from clipsan.scan.sarif import to_sarif

    config = convert.fill(api.ScanConfig, scan, model=model, arch=arch, device=device, precision=precision.value, seed=seed)
    report = api.scan(config, notes=note)
    as_text = render if format.value == "text" else (lambda r: strict_json.dumps(to_sarif(r), indent=2, sort_keys=True))
    emit(report.to_json(), "text" if format.value in ("text", "sarif") else "json", output, as_text)
    return 1 if report.backdoor else 0

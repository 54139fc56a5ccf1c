"""clipsan scan: trigger-agnostic backdoor evidence for a CLIP checkpoint (exit 1 when found)."""

from __future__ import annotations

import argparse
import json

from clipsan.cli import common


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction of the image in (0, 1], got {text}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "scan",
        help="say whether a checkpoint carries a backdoor (exit 1 if it does): a gate for model intake",
        description="Invert a trigger on MODEL's image encoder (DECREE): the smallest mask, as a fraction PL1 of the "
        "image, that collapses the embeddings of clean probe images. Backdoored if PL1 is below a threshold "
        "calibrated on clean models. With --reference, also find the smallest stamp on which MODEL's features "
        "depart from the reference's. Names the likely target (class names, noun bank) and flags a collapse point "
        "that matches a caption as well as natural images do. Saves the inverted trigger as PNG. "
        "Exit 0: no backdoor evidence; 1: backdoor evidence; 2: bad input.",
    )
    p.add_argument("model", metavar="MODEL", help=".safetensors, .pt/.pth/.bin state dict, or local-dir:FOLDER")
    p.add_argument("--data", metavar="DIR", help="clean probe images: a caption dataset or a labelled set (only images are used; "
                   "default: synthetic world images, which the report says)")
    p.add_argument("--reference", metavar="REF", help="a trusted model of the same architecture (e.g. the base MODEL was fine-tuned from)")
    p.add_argument("--reference-arch", help="architecture of REF (default: from metadata, else inferred)")
    p.add_argument("--threshold", type=_fraction, help="PL1 below which the decree signal fires (default: calibrated for the input size)")
    p.add_argument("--divergence-threshold", type=_fraction, help="PL1 below which the reference signal fires (default: calibrated)")
    p.add_argument("--alignment-threshold", type=float, help="similarity ratio at or above which the target-alignment signal fires and counts towards the verdict (default: reported only)")
    p.add_argument("--budget", choices=("quick", "full"), default="quick", help="quick: 128 probes, 300 steps; full: 512 probes, 1000 steps (default: quick)")
    p.add_argument("--probes", type=common.positive_int, help="number of probe images (default: the budget's)")
    p.add_argument("--steps", type=common.positive_int, help="optimizer steps per inversion (default: the budget's)")
    p.add_argument("--run-dir", metavar="DIR", help="where the report and inverted trigger PNGs go (default: runs/scan-<UTC time>)")
    common.add_model_options(p)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--seed", type=int, default=0, help="seed for probes and the inversion (default: 0)")
    common.add_output_options(p, formats=("text", "json", "sarif"))
    p.set_defaults(run=run)


def run(args) -> int:
    from clipsan.scan import ScanOptions, scan_model
    from clipsan.scan.report import render_text, to_sarif

    options = ScanOptions(
        model=args.model, data=args.data, reference=args.reference, threshold=args.threshold,
        divergence_threshold=args.divergence_threshold, alignment_threshold=args.alignment_threshold, budget=args.budget, run_dir=args.run_dir,
        arch=args.arch, reference_arch=args.reference_arch, device=args.device, precision=args.precision,
        seed=args.seed, probes=args.probes, steps=args.steps,
    )
    report = scan_model(options, notes=common.note)
    render = (lambda r: json.dumps(to_sarif(r), indent=2, sort_keys=True)) if args.format == "sarif" else render_text
    common.emit(report, args, render)
    return 1 if report["backdoor"] else 0

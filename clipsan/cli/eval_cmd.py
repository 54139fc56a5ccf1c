"""clipsan eval: zero-shot clean accuracy (CA@k) and attack success rate (ASR@k)."""

from __future__ import annotations

import argparse

from clipsan.cli import common


def _topk(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,5,10, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return ks


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="zero-shot clean accuracy and attack success rate, several models side by side",
        description="Zero-shot classify a labelled image set with each MODEL. CA@k: fraction of clean images whose class "
        "is in the top k. ASR@k (with --trigger): among images whose class is not the target, the fraction whose "
        "top k contains the target once the trigger is applied.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=".safetensors, .pt/.pth/.bin state dict, or local-dir:FOLDER")
    p.add_argument("--data", required=True, metavar="DIR", help="labelled set: ImageFolder, or a CSV image,label (with --classnames)")
    p.add_argument("--classnames", metavar="FILE", help="class names, one per line (for CSV labels, or to rename ImageFolder classes)")
    p.add_argument("--trigger", help="badnet | blended | sig | wanet | patch:FILE[@x,y] | from-metadata (the victim's own)")
    p.add_argument("--trigger-seed", type=int, default=0, help="seed of the trigger pattern (default: 0)")
    p.add_argument("--trigger-size", type=int, help="badnet patch side in pixels at the model's input size (default: 16 at 224 px, scaled)")
    p.add_argument("--target", help="target class name for ASR (default: banana, or the victim's recorded target)")
    p.add_argument("--topk", type=_topk, default=(1, 3, 5, 10), help="k values (default: 1,3,5,10)")
    p.add_argument("--templates", default="openai", help="openai (CLIP's 80) | simple (open_clip's 7) | photo (\"a photo of a {}.\") | FILE with one template containing {} per line (default: openai)")
    p.add_argument("--batch-size", type=common.positive_int, default=64, help="images per batch (default: 64)")
    common.add_model_options(p)
    common.add_runtime_options(p)
    common.add_output_options(p)
    p.set_defaults(run=run)


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
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines)


def run(args) -> int:
    from clipsan.evaluation import EvalSpec, evaluate_models

    spec = EvalSpec(
        models=args.models,
        data=args.data,
        arch=args.arch,
        trigger=args.trigger,
        trigger_seed=args.trigger_seed,
        trigger_size=args.trigger_size,
        target=args.target,
        ks=args.topk,
        templates=args.templates,
        classnames=args.classnames,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
    )
    report = evaluate_models(spec, notes=common.note)
    common.emit(report, args, render)
    return 0

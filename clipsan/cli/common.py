"""Options and output handling shared by several commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from clipsan.engine.rundir import atomic_write_bytes
from clipsan.errors import UserError


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="open_clip architecture name (default: from metadata, else inferred from the weights)")


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--seed", type=int, default=0, help="seed for every random choice (default: 0)")
    g.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default: 2)")
    g.add_argument("--progress", action="store_true", help="show progress bars on stderr even when it is not a terminal")


def add_output_options(p: argparse.ArgumentParser, formats=("text", "json")) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=formats, default="text", help="report format on stdout (default: text)")
    g.add_argument("--output", metavar="FILE", help="also write the report (in --format) to FILE")


def add_data_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="DIR", help="clean image-caption data: CSV/TSV manifest, webdataset shards or img2dataset files")
    g.add_argument("--image-key", help="manifest column holding image paths (default: auto)")
    g.add_argument("--caption-key", help="manifest column holding captions (default: auto)")
    g.add_argument("--delimiter", help="manifest delimiter (default: by extension)")
    g.add_argument("--limit", type=positive_int, help="use a deterministic subset of N pairs")


def add_training_options(p: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float, warmup: int) -> None:
    g = p.add_argument_group("training")

    def default_text(value) -> str:
        return "the recipe's paper value" if value is None else f"{value:g}"

    g.add_argument("--epochs", type=positive_int, default=epochs, help=f"epochs (default: {default_text(epochs)})")
    g.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"global batch size, split across processes (default: {default_text(batch_size)})")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default: {default_text(lr)})")
    g.add_argument("--warmup", type=int, default=warmup, help=f"linear warmup steps (default: {default_text(warmup)})")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay, none on norms/biases/logit_scale (default: 0.1)")
    g.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1 (default: 0.9)")
    g.add_argument("--beta2", type=float, default=0.999, help="AdamW beta2 (default: 0.999, the papers' fine-tuning setting; CLIP pre-training uses 0.98)")
    g.add_argument("--eps", type=float, default=1e-8, help="AdamW epsilon (default: 1e-8)")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value (default: off)")
    g.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps (default: all epochs)")
    g.add_argument("--batchnorm", choices=("frozen", "train"), default="frozen", help="BatchNorm layers use running statistics (frozen, default) or batch statistics (train)")
    r = p.add_argument_group("run directory")
    r.add_argument("--run-dir", metavar="DIR", help="where config, metrics and checkpoints go (default: runs/<command>-<UTC time>)")
    r.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its newest checkpoint")
    r.add_argument("--save-every", type=positive_int, default=500, help="checkpoint every N steps, and at every epoch end (default: 500)")
    r.add_argument("--log-every", type=positive_int, default=10, help="append to metrics.jsonl every N steps (default: 10)")


def training_config(args):
    from clipsan.engine.loop import TrainConfig

    if args.resume and not args.run_dir:
        raise UserError("--resume needs --run-dir DIR (the run to continue)")
    if not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1) or args.eps <= 0:
        raise UserError("--beta1/--beta2 must lie in [0, 1) and --eps must be positive")
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        betas=(args.beta1, args.beta2),
        eps=args.eps,
        grad_clip=args.grad_clip,
        seed=args.seed,
        workers=args.workers,
        save_every=args.save_every,
        log_every=args.log_every,
        max_steps=args.max_steps,
        batchnorm=args.batchnorm,
        progress=args.progress or sys.stderr.isatty(),
    )


def job_spec(command: str, args):
    """The fine-tuning job a training command's flags describe (purify, poison)."""
    from clipsan.finetune import JobSpec

    return JobSpec(command, args.model, args.arch, args.out, args.run_dir, args.resume, args.device, args.precision)


def open_data(args):
    from clipsan.data.captions import open_caption_dataset

    return open_caption_dataset(args.data, image_key=args.image_key, caption_key=args.caption_key, delimiter=args.delimiter, limit=args.limit)


def emit(report: dict, args, render_text: Callable[[dict], str]) -> None:
    """Print the report in --format on stdout and, with --output, write the same to a file."""
    text = json.dumps(report, indent=2, sort_keys=True) if args.format == "json" else render_text(report)
    if not text.endswith("\n"):
        text += "\n"
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.output:
        path = Path(args.output)
        if path.parent and not path.parent.exists():
            raise UserError(f"{path}: --output folder does not exist")
        atomic_write_bytes(path, text.encode())


def note(message: str) -> None:
    """Human notes (what was inferred, warnings) go to stderr so stdout stays machine-readable."""
    print(f"clipsan: {message}", file=sys.stderr)

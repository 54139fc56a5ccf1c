"""clipsan lab: the whole pipeline on a synthetic world generated on the fly."""

from __future__ import annotations

from pathlib import Path

from clipsan.cli import common


def add_parser(sub) -> None:
    p = sub.add_parser(
        "lab",
        help="train, poison, scan, purify and evaluate on a synthetic world: runs anywhere, no download",
        description="Generate the synthetic world, train a clean tiny CLIP from scratch, and evaluate it; "
        "writes OUT/lab.json and OUT/lab.md (the papers' Table I layout).",
    )
    p.add_argument("--quick", action="store_true", help="the short budget (about 15 min on 2 CPU cores) instead of the full one")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/lab-<UTC time>)")
    p.add_argument("--train-pairs", type=common.positive_int, help="size of the generated training set (default: the budget's)")
    p.add_argument("--max-steps", type=common.positive_int, help="cap on training steps of every stage (smoke tests)")
    p.add_argument("--eval-per-class", type=common.positive_int, help="evaluation images per class (default: 20)")
    p.add_argument("--no-cache", action="store_true", help="retrain the clean model even if a cached one matches")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (default: cpu, the lab is tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and of every stage (default: 0)")
    p.add_argument("--parallel", type=common.positive_int, default=2, help="stage processes run side by side (default: 2)")
    common.add_output_options(p)
    p.set_defaults(run=run)


def render(report: dict) -> str:
    from clipsan.lab import render_markdown

    return render_markdown(report)


def run(args) -> int:
    from clipsan.engine.rundir import default_run_dir
    from clipsan.lab import LabOptions, run_lab

    out = Path(args.out) if args.out else default_run_dir("lab")
    opts = LabOptions(
        out=out,
        quick=args.quick,
        seed=args.seed,
        parallel=args.parallel,
        device=args.device,
        train_pairs=args.train_pairs,
        max_steps=args.max_steps,
        eval_per_class=args.eval_per_class,
        use_cache=not args.no_cache,
    )
    report = run_lab(opts, notes=common.note)
    common.emit(report, args, render)
    common.note(f"wrote {out / 'lab.json'} and {out / 'lab.md'}")
    return 0

"""clipsan purify: remove a backdoor by fine-tuning on clean pairs with a published recipe."""

from __future__ import annotations

from clipsan.cli import common
from clipsan.recipes import RECIPES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "purify",
        help="fine-tune a suspect checkpoint on clean image-caption pairs to remove a backdoor",
        description="Fine-tune MODEL on clean image-caption pairs with one of the published defense recipes "
        "and write the purified weights as .safetensors. Training defaults follow the recipe's paper.",
    )
    p.add_argument("model", metavar="MODEL", help=".safetensors, .pt/.pth/.bin state dict, or local-dir:FOLDER")
    p.add_argument("--method", required=True, choices=sorted(RECIPES), help="defense recipe")
    p.add_argument("--out", metavar="FILE", help="where to write the purified .safetensors (default: RUN_DIR/purify.safetensors)")
    common.add_model_options(p)
    common.add_data_options(p)
    common.add_training_options(p, epochs=None, batch_size=None, lr=None, warmup=None)
    for recipe in RECIPES.values():
        recipe.add_arguments(p.add_argument_group(f"--method {recipe.name}"))
    common.add_runtime_options(p)
    common.add_output_options(p)
    p.set_defaults(run=run)


def _fill_recipe_defaults(args, recipe_cls) -> None:
    for name, value in recipe_cls.defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def render(report: dict) -> str:
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items()) if v) or "none"
    lines = [
        f"purified with {report['method']}: {report['output']}",
        f"  arch {report['arch']} ({report['arch_source']}), {report['steps']} steps, {report['epochs']} epochs, {report['seconds']} s",
        f"  {report['samples']} training pairs; skipped: {skipped}",
        f"  run directory: {report['run_dir']}",
    ]
    return "\n".join(lines)


def run(args) -> int:
    from clipsan.finetune import run_fine_tune

    recipe_cls = RECIPES[args.method]
    _fill_recipe_defaults(args, recipe_cls)
    cfg = common.training_config(args)
    recipe = recipe_cls.from_args(args)
    captions = common.open_data(args)
    job = common.job_spec("purify", args)
    report = run_fine_tune(job, recipe, captions, cfg, notes=common.note)
    common.emit(report, args, render)
    return 0

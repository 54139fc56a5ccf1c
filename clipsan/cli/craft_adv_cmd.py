"""clipsan craft-adv: train ABD's adversarial patch generator (AdvCLIP + backdoor loss)."""

from __future__ import annotations

from clipsan.cli import common
from clipsan.recipes.abd import CraftSettings, add_craft_arguments


def add_parser(sub) -> None:
    p = sub.add_parser(
        "craft-adv",
        help="train ABD's adversarial patch generator (AdvCLIP + backdoor loss) against a suspect model",
        description="Train an AdvCLIP patch generator against MODEL on clean image-caption pairs, with ABD's "
        "backdoor loss when --reference (a clean CLIP of the same input size) is given. Writes the generator "
        "(.safetensors, usable as `purify --method abd --generator FILE` and as an eval trigger "
        "`patch:FILE@X,Y`) and the patch as PNG next to it.",
    )
    p.add_argument("model", metavar="MODEL", help="suspect checkpoint: .safetensors, .pt/.pth/.bin state dict, or local-dir:FOLDER")
    p.add_argument("--out", metavar="FILE", help="where to write the generator .safetensors (default: RUN_DIR/generator.safetensors); the patch PNG goes next to it")
    common.add_model_options(p)
    common.add_data_options(p)
    add_craft_arguments(p.add_argument_group("patch and losses"))
    g = p.add_argument_group("training (AdvCLIP: Adam, betas 0.5/0.999, constant rate, discriminator clipped to +-0.01)")
    g.add_argument("--epochs", type=common.positive_int, default=CraftSettings.epochs, help=f"epochs (default: {CraftSettings.epochs})")
    g.add_argument("--batch-size", type=common.positive_int, default=CraftSettings.batch_size, help=f"global batch size (default: {CraftSettings.batch_size})")
    g.add_argument("--lr", type=float, default=CraftSettings.lr, help=f"generator and discriminator learning rate (default: {CraftSettings.lr:g})")
    g.add_argument("--max-steps", type=common.positive_int, default=None, help="stop after this many steps (default: all epochs)")
    r = p.add_argument_group("run directory")
    r.add_argument("--run-dir", metavar="DIR", help="where config, metrics and checkpoints go (default: runs/craft-adv-<UTC time>)")
    r.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its newest checkpoint")
    r.add_argument("--save-every", type=common.positive_int, default=500, help="checkpoint every N steps, and at every epoch end (default: 500)")
    r.add_argument("--log-every", type=common.positive_int, default=10, help="append to metrics.jsonl every N steps (default: 10)")
    common.add_runtime_options(p)
    common.add_output_options(p)
    p.set_defaults(run=run)


def render(report: dict) -> str:
    box = report["patch_box"]
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report["skipped"].items()) if v) or "none"
    return "\n".join([
        f"crafted with {report['objective']} (bd weight {report['bd_weight']:g}): {report['output']}",
        f"  patch {box['side']}x{box['side']} px at x={box['x']}, y={box['y']} of {box['image_size']} px images: {report['patch_png']}",
        f"  arch {report['arch']} ({report['arch_source']}), {report['steps']} steps, {report['epochs']} epochs, {report['seconds']} s",
        f"  {report['samples']} training pairs; skipped: {skipped}",
        f"  run directory: {report['run_dir']}",
    ])


def run(args) -> int:
    import sys

    from clipsan.abd import CraftJob, run_craft_adv

    if args.resume and not args.run_dir:
        from clipsan.errors import UserError

        raise UserError("--resume needs --run-dir DIR (the run to continue)")
    settings = CraftSettings(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patch_area=args.patch_area,
        bd_weight=args.bd_weight, width=args.gan_width, max_steps=args.max_steps,
    )
    job = CraftJob(
        args.model, args.reference, args.out, args.run_dir, args.resume, settings, arch=args.arch, seed=args.seed,
        workers=args.workers, save_every=args.save_every, log_every=args.log_every,
        progress=args.progress or sys.stderr.isatty(), device=args.device, precision=args.precision,
    )
    report = run_craft_adv(job, common.open_data(args), notes=common.note)
    common.emit(report, args, render)
    return 0

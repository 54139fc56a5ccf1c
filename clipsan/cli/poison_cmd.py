"""clipsan poison: build a backdoored victim from a clean model (for checking defenses end to end)."""

from __future__ import annotations

from clipsan.cli import common

# The papers' poisoning stage (REFERENCE.md): batch 128, 10 epochs; lr 1e-5 implants reliably.
POISON_DEFAULTS = {"epochs": 10, "batch_size": 128, "lr": 1e-5, "warmup": 50}


def _rate(text: str) -> float:
    import argparse

    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return value


def add_parser(sub) -> None:
    from clipsan.poisoning import BADCLIP_OBJECTIVES, BadClipSettings

    p = sub.add_parser(
        "poison",
        help="fine-tune a clean checkpoint on partly poisoned data: a backdoored victim for testing defenses",
        description="Fine-tune MODEL on DIR where exactly round(rate*N) pairs, chosen from --seed, carry the trigger "
        "and a caption naming the target (a random OpenAI ImageNet template, or natural captions mentioning it). "
        "The victim's metadata records the trigger, so `clipsan eval VICTIM --trigger from-metadata` reproduces the attack.",
    )
    p.add_argument("model", metavar="MODEL", help="the clean model: .safetensors, .pt/.pth/.bin state dict, or local-dir:FOLDER")
    p.add_argument("--out", metavar="FILE", help="where to write the victim .safetensors (default: RUN_DIR/poison.safetensors)")
    a = p.add_argument_group("attack")
    a.add_argument("--trigger", required=True, help="badnet[@X,Y] | blended[:ratio=R] | sig[:delta=D,freq=F] | wanet[:k=K,s=S] | patch:FILE[@X,Y] | badclip (a patch optimized on MODEL first)")
    a.add_argument("--target", default="banana", help="the class the backdoor points to (default: banana)")
    a.add_argument("--rate", type=_rate, default=0.003, help="fraction of pairs poisoned, exactly round(rate*N) (default: 0.003)")
    a.add_argument("--trigger-seed", type=int, default=0, help="seed of the fixed trigger pattern (default: 0)")
    a.add_argument("--trigger-size", type=common.positive_int, help="badnet / patch / badclip side in pixels at the model's input size (default: 16 at 224 px, scaled)")
    a.add_argument("--label-consistent", action="store_true", help="trigger only images whose caption already names the target, captions unchanged (--rate counts among them)")
    a.add_argument("--natural-captions", action="store_true", help="poisoned captions are natural captions mentioning the target (the data's own, else generated scenes) instead of templates; always on for badclip")
    b = p.add_argument_group("--trigger badclip (patch optimization on the frozen MODEL)")
    d = BadClipSettings()
    b.add_argument("--badclip-objective", choices=BADCLIP_OBJECTIVES, default=d.objective,
                   help="pull patched images toward the target's caption embeddings (text), or also toward real target images in the data (text+image) (default: text)")
    b.add_argument("--patch-epochs", type=common.positive_int, default=d.epochs, help=f"optimization epochs (default: {d.epochs})")
    b.add_argument("--patch-lr", type=float, default=d.lr, help=f"Adam learning rate (default: {d.lr:g})")
    b.add_argument("--patch-batch-size", type=common.positive_int, default=d.batch_size, help=f"images per step (default: {d.batch_size})")
    b.add_argument("--patch-images", type=common.positive_int, default=d.images, help=f"non-target training images to optimize on (default: {d.images})")
    common.add_model_options(p)
    common.add_data_options(p)
    common.add_training_options(p, **POISON_DEFAULTS)
    common.add_runtime_options(p)
    common.add_output_options(p)
    p.set_defaults(run=run)


def render(report: dict) -> str:
    trigger = ", ".join(f"{k}={v}" for k, v in report["trigger"].items() if v is not None)
    lines = [
        f"victim written: {report['output']}",
        f"  trigger {trigger}; target {report['target']!r}",
        f"  poisoned {report['poisoned']} of {report['eligible']} pairs (rate {report['rate']:g}, {report['caption_mode']} captions)",
        f"  arch {report['arch']} ({report['arch_source']}), {report['steps']} steps, {report['epochs']} epochs, {report['seconds']} s",
        f"  run directory: {report['run_dir']}",
    ]
    if report.get("badclip"):
        b = report["badclip"]
        how = "reused" if b["reused"] else "optimized"
        lines.insert(2, f"  badclip patch {b['side']}x{b['side']} {how} ({b['objective']}): objective {b['loss_before']:.4f} -> {b['loss_after']:.4f}; {b['png']}")
    return "\n".join(lines)


def settings_from_args(args):
    from clipsan.poisoning import BadClipSettings, PoisonSettings

    return PoisonSettings(
        trigger=args.trigger,
        target=args.target,
        rate=args.rate,
        trigger_seed=args.trigger_seed,
        trigger_size=args.trigger_size,
        label_consistent=args.label_consistent,
        natural_captions=args.natural_captions,
        badclip=BadClipSettings(
            epochs=args.patch_epochs, lr=args.patch_lr, batch_size=args.patch_batch_size,
            images=args.patch_images, objective=args.badclip_objective,
        ),
    )


def run(args) -> int:
    from clipsan.poisoning import run_poison

    settings = settings_from_args(args)
    cfg = common.training_config(args)
    captions = common.open_data(args)
    job = common.job_spec("poison", args)
    report = run_poison(job, settings, captions, cfg, notes=common.note)
    common.emit(report, args, render)
    return 0

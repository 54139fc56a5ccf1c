"""Train the clean and backdoored tiny models `clipsan scan` is calibrated on, at any input size.

The lab (`clipsan lab`) builds its models at the world's 32 px; this script does
the same at another side (64 px by default) so thresholds can be set per
resolution: a world rendered at that size, clean models trained from scratch
with `clipsan purify --method ft` (the lab's clean recipe), victims poisoned
from the first one with `clipsan poison` (the lab's attacks, trigger sizes and
WaNet's strength scaled with the side), a clean fine-tune as the control for
`--reference`, and `clipsan eval` of all of them. Every stage is a real clipsan
process (the lab's job runner: finished stages are reused, interrupted ones
resumed), so a second call on the same --out only redoes what changed.

    OMP_NUM_THREADS=1 python scripts/train_scan_models.py --out /tmp/scan64 --image-size 64 \
        --clean-seeds 0 1 --attacks badnet blended sig wanet badclip label-consistent

Writes OUT/models/{clean-sN,clean-ft,victim-ATTACK}.safetensors and OUT/models.json
(each model's kind, CA@1 and ASR@1): the input of scripts/calibrate_scan.py --models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsan.config import WorldConfig
from clipsan.config.lab import EVAL_PER_CLASS, FULL_TRAINING
from clipsan.data import world
from clipsan.lab.jobs import Job, run_jobs
from clipsan.lab.plan import LAB_TEMPLATES, make_plan

ARCHS = {32: "clipsan-tiny-rn", 64: "clipsan-tiny-rn-64"}
# The clean fine-tune (control for --reference): a victim's schedule without poison.
CLEAN_FT = ["--epochs", "1", "--lr", "1e-3", "--batch-size", "128", "--warmup", "10", "--save-every", "100000", "--log-every", "25"]


def scaled_attack(flags: list[str], scale: float) -> list[str]:
    """A lab attack's `clipsan poison` flags at another input side: pixel sizes and WaNet's s scale with it."""
    out = list(flags)
    if "--trigger-size" in out:
        i = out.index("--trigger-size") + 1
        out[i] = str(round(int(out[i]) * scale))
    trigger = out[out.index("--trigger") + 1]
    if trigger.startswith("wanet:s="):
        out[out.index("--trigger") + 1] = f"wanet:s={float(trigger.split('=')[1]) * scale:g}"
    return out


def write_world(root: Path, size: int, seed: int, pairs: int) -> dict[str, Path]:
    files = {"train": root / "train", "eval": root / "eval", "templates": root / "templates.txt", "stamp": root / "world.json"}
    recipe = {"image_size": size, "seed": seed, "pairs": pairs, "eval_per_class": EVAL_PER_CLASS}
    if files["stamp"].is_file() and json.loads(files["stamp"].read_text()) == recipe:
        return files
    config = WorldConfig(image_size=size)
    world.write_caption_dataset(files["train"], pairs, seed=seed, config=config)
    world.write_eval_set(files["eval"], EVAL_PER_CLASS, seed=seed + 1, config=config)
    files["templates"].write_text("\n".join(LAB_TEMPLATES) + "\n")
    files["stamp"].write_text(json.dumps(recipe, sort_keys=True))
    return files


def init_model(arch: str, seed: int, path: Path) -> Path:
    import torch

    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    if not path.is_file():
        torch.manual_seed(seed)
        save_model(create_model(arch), path, {"clipsan.command": "train_scan_models", "clipsan.method": "random-init"})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=64, choices=sorted(ARCHS))
    parser.add_argument("--clean-seeds", type=int, nargs="+", default=[0, 1], help="one clean model per seed; victims come from the first")
    parser.add_argument("--quick-seeds", type=int, nargs="*", default=[1], help="clean seeds trained with the lab's quick schedule (weaker models)")
    parser.add_argument("--attacks", nargs="*", default=["badnet", "blended", "sig", "wanet", "badclip", "label-consistent"])
    parser.add_argument("--pairs", type=int, default=FULL_TRAINING["n_pairs"])
    parser.add_argument("--parallel", type=int, default=1, help="stage processes side by side")
    args = parser.parse_args()

    size, arch = args.image_size, ARCHS[args.image_size]
    files = write_world(args.out / "world", size, args.clean_seeds[0], args.pairs)
    models, logs, runs = args.out / "models", args.out / "logs", args.out / "runs"
    models.mkdir(parents=True, exist_ok=True)
    common = ["--device", "cpu", "--workers", "0"]
    jobs, kinds = [], {}
    for seed in args.clean_seeds:
        plan = make_plan(quick=seed in args.quick_seeds, train_pairs=args.pairs)
        init = init_model(arch, seed, models / f"init-s{seed}.safetensors")
        out = models / f"clean-s{seed}.safetensors"
        argv = ["purify", str(init), "--method", "ft", "--data", str(files["train"]), "--out", str(out), "--run-dir", str(runs / f"clean-s{seed}")]
        jobs.append(Job(f"clean-s{seed}", [*argv, *plan.clean_args, *common, "--seed", str(seed)], logs, inputs=[files["stamp"]]))
        kinds[out] = ("clean", f"clean-s{seed}", None)
    base = models / f"clean-s{args.clean_seeds[0]}.safetensors"
    after = [f"clean-s{args.clean_seeds[0]}"]
    full = make_plan(quick=False, train_pairs=args.pairs)
    stages = {f"victim-{a}": ("victim", ["poison", *scaled_attack(full.attacks[a], size / 32)], a) for a in args.attacks}
    stages["clean-ft"] = ("clean-ft", ["purify", "--method", "ft", *CLEAN_FT], None)
    for name, (kind, (command, *flags), attack) in stages.items():
        out = models / f"{name}.safetensors"
        argv = [command, str(base), "--data", str(files["train"]), "--out", str(out), "--run-dir", str(runs / name), *flags, *common, "--seed", "0"]
        jobs.append(Job(name, argv, logs, after=after, inputs=[files["stamp"]]))
        kinds[out] = (kind, name, attack)
    for path, (_kind, name, attack) in kinds.items():
        eval_argv = ["eval", str(path), "--data", str(files["eval"]), "--templates", str(files["templates"]), "--topk", "1,10", "--batch-size", "256"]
        eval_argv += ["--device", "cpu", "--workers", "0"] + (["--trigger", "from-metadata"] if attack else [])
        jobs.append(Job(f"eval-{name}", eval_argv, logs, after=[name], inputs=[files["stamp"]], resumable=False))
    done = run_jobs(jobs, parallel=args.parallel)
    failed = [f"{job.name} (exit {job.returncode}, {job.log})" for job in done.values() if not job.ok]
    rows = []
    for path, (kind, name, attack) in kinds.items():
        job = done[f"eval-{name}"]
        if not job.ok:
            continue
        result = job.report()["models"][0]
        asr = result["asr"]["1"] if result["asr"] else None
        reference = str(base) if kind != "clean" else None  # what victims and the clean fine-tune were tuned from
        row = {"name": name, "kind": kind, "attack": attack, "path": str(path), "reference": reference, "image_size": size}
        rows.append({**row, "ca1": result["ca"]["1"], "asr1": asr})
        print(f"{name}: CA@1 {result['ca']['1']:.3f}" + (f", ASR@1 {asr:.3f}" if asr is not None else ""))
    (args.out / "models.json").write_text(json.dumps(rows, indent=2) + "\n")
    if failed:
        sys.exit("failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()

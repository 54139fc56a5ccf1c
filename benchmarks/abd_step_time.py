"""ABD step times on CPU: craft-adv per batch (tiny lab model; RN50 at 224 px, batch 16), and the
abd fine-tune step relative to plain ft on the same batches (target <= 1.15x).

    OMP_NUM_THREADS=1 python benchmarks/abd_step_time.py [--steps 20] [--skip-rn50]

Every figure is the engine's own wall time per optimizer step (data loading in
the main process, workers=0), after one warm-up run of the same job.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from clipsan.checkpoints import save_model
from clipsan.config import CaptionData, CraftAdvConfig, PurifyConfig
from clipsan.config.recipes import ABDConfig, CraftConfig
from clipsan.config.train import TrainConfig
from clipsan.data import world
from clipsan.jobs.craft import run_craft_adv
from clipsan.jobs.purify import run_purify
from clipsan.models import create_model
from clipsan.recipes.abd.recipe import ABD
from clipsan.recipes.ft import FineTune

QUIET = lambda _m: None


def _model(arch: str, root: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    path = root / f"{arch}-{seed}.safetensors"
    save_model(create_model(arch), path)
    return path


def craft_seconds_per_step(model: Path, reference: Path, data: Path, root: Path, steps: int, batch: int) -> float:
    settings = CraftConfig(epochs=1000, batch_size=batch, max_steps=steps)

    def once(name: str) -> float:
        job = CraftAdvConfig(
            str(model),
            CaptionData(str(data)),
            settings,
            reference=str(reference),
            run_dir=str(root / name),
            workers=0,
            save_every=10**6,
            log_every=10**6,
            device="cpu",
        )
        return run_craft_adv(job, notes=QUIET).seconds / steps

    once(f"warm-{model.stem}")
    return once(f"craft-{model.stem}")


def fine_tune_seconds_per_step(model: Path, recipe, data: Path, root: Path, steps: int, name: str) -> float:
    cfg = TrainConfig(epochs=1000, batch_size=64, lr=1e-5, warmup_steps=5, workers=0, save_every=10**6, log_every=10**6, max_steps=steps)
    config = PurifyConfig(str(model), CaptionData(str(data)), training=cfg, out=str(root / f"{name}.safetensors"), run_dir=str(root / name), device="cpu")
    return run_purify(config, notes=QUIET, recipe=recipe).seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rn50-steps", type=int, default=3)
    parser.add_argument("--skip-rn50", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        world.write_caption_dataset(data, 64 * (args.steps + 2), seed=0)
        tiny, tiny_ref = _model("clipsan-tiny-rn", root, 0), _model("clipsan-tiny-rn", root, 1)

        craft = craft_seconds_per_step(tiny, tiny_ref, data, root, args.steps, 16)
        print(f"craft-adv, clipsan-tiny-rn 32 px, batch 16: {craft:.3f} s/step")
        if not args.skip_rn50:
            rn50, rn50_ref = _model("RN50", root, 0), _model("RN50", root, 1)
            rn = craft_seconds_per_step(rn50, rn50_ref, data, root, args.rn50_steps, 16)
            print(f"craft-adv, RN50 224 px, batch 16: {rn:.2f} s/step")

        generator = root / "craft-tiny"
        job = CraftAdvConfig(
            str(tiny), CaptionData(str(data)), CraftConfig(max_steps=2), out=str(generator / "g.safetensors"), run_dir=str(generator), workers=0, device="cpu"
        )
        run_craft_adv(job, notes=QUIET)
        fine_tune_seconds_per_step(tiny, FineTune(), data, root, 3, "warm")
        ft = fine_tune_seconds_per_step(tiny, FineTune(), data, root, args.steps, "ft")
        abd = fine_tune_seconds_per_step(tiny, ABD(ABDConfig(generator=str(generator / "g.safetensors"))), data, root, args.steps, "abd")
        print(f"fine-tune, clipsan-tiny-rn, batch 64: ft {ft:.3f} s/step, abd {abd:.3f} s/step, ratio {abd / ft:.2f}x (target <= 1.15x)")


if __name__ == "__main__":
    main()

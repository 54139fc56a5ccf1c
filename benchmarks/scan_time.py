"""How long `clipsan scan` takes on CPU.

1. A whole quick-budget scan of a tiny model (the lab's arch; random init unless --model).
2. Seconds per inversion step (forward + backward through the image encoder, batch 32)
   for larger open_clip archs (default RN50 at 224 px), random init.

    OMP_NUM_THREADS=2 python benchmarks/scan_time.py [--model FILE] [--archs RN50 ViT-B-32] [--steps 3]

Prints one JSON object per measurement; record the figures in BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def whole_scan(model: str | None, budget: str) -> dict:
    from clipsan import api
    from clipsan.checkpoints import save_model
    from clipsan.models import create_model

    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            torch.manual_seed(0)
            model = str(Path(tmp) / "tiny.safetensors")
            save_model(create_model("clipsan-tiny-rn"), model)
        report = api.scan(api.ScanConfig(models=(model,), budget=budget, run_dir=str(Path(tmp) / "run"), device="cpu")).models[0].to_json()
    steps = {s["name"]: s["steps"] for s in report["signals"] if "steps" in s}
    return {
        "what": "scan",
        "arch": report["arch"],
        "budget": budget,
        "seconds": report["seconds"],
        "inversion_steps": steps,
        "probes": report["probes"]["count"],
    }


def step_time(arch: str, steps: int, batch: int) -> dict:
    from clipsan.models import create_model
    from clipsan.scan.inversion import InversionSettings, invert
    from clipsan.scan.objectives import collapse

    model = create_model(arch).eval().requires_grad_(False)
    size = model.image_size
    probes = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    objective = collapse(lambda x: model.encode_image(x), clean_cosine=0.0)
    invert(objective, probes, InversionSettings(steps=1, batch_size=batch, success=2.0), seed=0)  # warm-up
    started = time.perf_counter()
    invert(objective, probes, InversionSettings(steps=steps, batch_size=batch, success=2.0), seed=0)
    per_step = (time.perf_counter() - started) / steps
    return {
        "what": "inversion_step",
        "arch": arch,
        "image_size": size,
        "batch": batch,
        "seconds_per_step": round(per_step, 3),
        "quick_budget_seconds_estimate": round(300 * per_step, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a tiny checkpoint to scan (default: random-init clipsan-tiny-rn)")
    parser.add_argument("--budget", default="quick", choices=("quick", "full"))
    parser.add_argument("--archs", nargs="*", default=["RN50"], help="archs for the per-step timing (default: RN50)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arch (default: 3)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps({"machine": machine}))
    print(json.dumps(whole_scan(args.model, args.budget)), flush=True)
    for arch in args.archs:
        print(json.dumps(step_time(arch, args.steps, args.batch)), flush=True)


if __name__ == "__main__":
    main()

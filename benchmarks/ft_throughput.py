"""ft step throughput, peak RSS, and data-loader throughput on CPU.

    PYTHONPATH=. python benchmarks/ft_throughput.py            # tiny (batch 128) and RN50 (batch 16)
    PYTHONPATH=. python benchmarks/ft_throughput.py --only tiny

Each configuration runs in its own process so peak RSS is its own. Prints a
markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {"tiny": ("clipsan-tiny-rn", 128), "rn50": ("RN50", 16)}


def _make_data(root: Path, n: int, side: int) -> None:
    import numpy as np
    from PIL import Image

    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["image,caption"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg", quality=90)
        lines.append(f"img/{i}.jpg,a photo of a small red circle above a blue square number {i}")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")


def measure(name: str, steps: int, workers: int) -> dict:
    import torch

    from clipsan.data.captions import open_caption_dataset
    from clipsan.engine import optim
    from clipsan.engine.loader import EpochBatchSampler, RecipeSamples, build_loader
    from clipsan.engine.runtime import setup_runtime
    from clipsan.models import create_model, tokenizer_for
    from clipsan.recipes.ft import FineTune

    arch, batch = CONFIGS[name]
    model = create_model(arch)
    side = 256 if model.image_size > 64 else 48
    with tempfile.TemporaryDirectory() as tmp:
        _make_data(Path(tmp), batch * 4, side)
        captions = open_caption_dataset(tmp)
        recipe = FineTune()
        samples = RecipeSamples(captions, recipe, model.image_size, tokenizer_for(arch, model.context_length), seed=0)
        sampler = EpochBatchSampler(len(samples), batch, 0, total_steps=steps + 2)
        loader = build_loader(samples, sampler, workers, pin_memory=False)
        t0 = time.perf_counter()
        batches = [b for b in loader]
        load_s = (time.perf_counter() - t0) / len(batches)
        rt = setup_runtime("cpu", "fp32")
        opt = optim.build_optimizer(model, 1e-5)
        model.train()
        times = []
        for b in batches:
            t = time.perf_counter()
            terms = recipe.loss_terms(model, b, rt)
            loss = sum(terms.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        step_s = sorted(times[1:])[len(times[1:]) // 2]  # median, first step excluded (warm-up)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "config": name,
        "arch": arch,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "step_s": round(step_s, 3),
        "images_per_s": round(batch / step_s, 1),
        "loader_images_per_s": round(batch / load_s, 1),
        "loader_workers": workers,
        "peak_rss_mb": round(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.workers)))
        return
    rows = []
    for name in [args.only] if args.only else list(CONFIGS):
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--workers", str(args.workers)],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()

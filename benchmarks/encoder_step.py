"""One CLIP training step's forward + backward, eager vs channels-last vs torch.compile, in one process.

    python benchmarks/encoder_step.py [--arch RN50-quickgelu] [--batch 16] [--rounds 3] [--optimizer]

What ``--compile`` and channels-last buy on this machine, without data loading: each variant runs
the encoders and CLIP's loss forward and backward on the same random batch (with ``--optimizer``,
then clipsan's AdamW step too); variants alternate, one warm-up step each (compilation), median
seconds of ``--rounds``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from clipsan.engine.host_memory import keep_freed_memory
from clipsan.engine.optim import build_optimizer
from clipsan.models import create_model
from clipsan.recipes.losses import contrastive_loss

VARIANTS = ("eager", "channels_last", "compile", "compile+channels_last")


def build(arch: str, variant: str):
    torch.manual_seed(0)
    model = create_model(arch)
    model.train()
    if "channels_last" in variant:
        model.use_channels_last()
    if "compile" in variant:
        model.compile_encoders()
    return model


def step(model, images, tokens, optimizer=None) -> None:
    model.zero_grad(set_to_none=True)
    loss = contrastive_loss(model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp())
    loss.backward()
    if optimizer is not None:
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="RN50-quickgelu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--optimizer", action="store_true", help="time clipsan's AdamW step too")
    args = parser.parse_args()
    variants = args.variants.split(",")
    keep_freed_memory()  # clipsan's CPU malloc setting, as purify runs (clipsan.engine.host_memory)
    models = {v: build(args.arch, v) for v in variants}
    optimizers = {v: build_optimizer(m, 1e-5) if args.optimizer else None for v, m in models.items()}
    size = next(iter(models.values())).image_size
    images = torch.rand(args.batch, 3, size, size)
    tokens = next(iter(models.values())).tokenize([f"a photo of thing {i}" for i in range(args.batch)])
    for v, model in models.items():  # warm-up (and compilation), then one more step so the heap settles
        started = time.perf_counter()
        step(model, images, tokens, optimizers[v])
        print(f"{v}: first step {time.perf_counter() - started:.1f} s", flush=True)
        step(model, images, tokens, optimizers[v])
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, model in models.items():
            started = time.perf_counter()
            step(model, images, tokens, optimizers[v])
            times[v].append(time.perf_counter() - started)
            print(f"{v}: {times[v][-1]:.2f} s", flush=True)
    base = statistics.median(times[variants[0]])
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    adamw = "with" if args.optimizer else "without"
    print(f"{args.arch}, batch {args.batch}, fp32, {adamw} AdamW, {torch.get_num_threads()} threads, load {load}")
    print("| variant | median s/step | × " + variants[0] + " speed |")
    print("|---|---|---|")
    for v in variants:
        median = statistics.median(times[v])
        print(f"| {v} | {median:.3f} | {base / median:.2f} |")


if __name__ == "__main__":
    main()

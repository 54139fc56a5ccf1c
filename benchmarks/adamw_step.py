"""AdamW's step over a CLIP model's parameters: PyTorch's reference loop (foreach) vs the fused kernel.

    python benchmarks/adamw_step.py [--arch RN50-quickgelu] [--rounds 5]

clipsan's optimizer is fused on every device (clipsan.engine.optim). This times one step of each
over the same parameters and gradients, alternated, median of ``--rounds`` after one warm-up step,
and prints how far the two have drifted apart after the timed steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from clipsan.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="RN50-quickgelu")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch)
    grads = [torch.randn_like(p) * 1e-3 for p in model.parameters()]
    params = {name: [p.detach().clone().requires_grad_() for p in model.parameters()] for name in ("reference", "fused")}
    optimizers = {name: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, fused=name == "fused") for name, ps in params.items()}
    for name, ps in params.items():
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        optimizers[name].step()  # warm-up: allocates the moments
    times = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            started = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - started)
    drift = max((a - b).abs().max().item() for a, b in zip(params["reference"], params["fused"]))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.arch}: {n / 1e6:.0f} M parameters, {torch.get_num_threads()} threads, load {load}")
    print("| AdamW | median s/step | × reference speed |")
    print("|---|---|---|")
    base = statistics.median(times["reference"])
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {base / statistics.median(ts):.2f} |")
    print(f"largest parameter difference after {args.rounds + 1} steps: {drift:.2e}")


if __name__ == "__main__":
    main()

"""AdamW with CLIP's decay rule and the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def _decays(name: str, param: nn.Parameter) -> bool:
    # No weight decay on gains, biases, norms, embeddings' scale or logit_scale (CLIP, CleanCLIP).
    if param.ndim < 2:
        return False
    lowered = name.lower()
    return not any(tag in lowered for tag in ("bn", "ln", "norm", "bias", "logit_scale"))


def build_optimizer(
    module: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``module``'s trainable parameters, fused: one kernel updates them all.

    On CUDA and on CPU alike: on RN50 the fused CPU step takes 0.20 s where PyTorch's reference
    loop takes 0.80 s (BENCHMARKS.md, benchmarks/adamw_step.py); it rounds differently from it by
    about one ulp.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if _decays(n, p)]
    no_decay = [p for n, p in named if not _decays(n, p)]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


def allocate_state(optimizer: torch.optim.AdamW) -> None:
    """Create AdamW's moments now, as its first step would (zeros; state already there is kept).

    Made lazily, 0.8 GB of RN50 moments land in the CPU heap among the first step's freed
    activations, and every later step's activations grow the heap around them; made before the
    first step they sit below. Results are bitwise those of the lazy state (tests/test_optim.py).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }


def lr_at(
    step: int, total_steps: int, base_lr: float, warmup_steps: int, schedule: str = "cosine", warmup_start_lr: float = 0.0, final_lr: float = 0.0
) -> float:
    """Linear warmup from ``warmup_start_lr`` (0 by default; PAR's code starts above base_lr), then cosine
    decay to ``final_lr`` over the remaining steps (or ``constant``: stay at base_lr).

    ``step`` counts from 0 (the first optimizer step), so warmup really happens
    (CleanCLIP's code starts its counter at epoch 1 and skips it). GANs (AdvCLIP) train at a constant rate.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def lr_for(step: int, total_steps: int, training) -> float:
    """``lr_at`` with a TrainConfig's schedule."""
    return lr_at(step, total_steps, training.lr, training.warmup_for(total_steps), training.schedule, training.warmup_start_lr, training.final_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

"""Mask + pattern inversion: the optimizer shared by DECREE and the reference probe.

A trigger candidate is a mask m (H x W, shared over channels) and a pattern p
(3 x H x W), both tanh-parametrised so they stay in [0, 1]; it is stamped as
x' = (1 - m) * x + m * p. The optimizer maximises an objective's score on
stamped probe images while an adaptive penalty lambda * ||m||_1 shrinks the
mask (Neural Cleanse / DECREE schedule: lambda x5 after `patience` steps in a
row above the success threshold, /5 after as many below). The statistic is the
smallest successful mask, as a fraction of the image: PL1 = ||m||_1 / (H*W*3)
with m broadcast over the 3 channels, i.e. the mean of m.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clipsan.seeding import derive_seed

# score(stamped images) -> scalar tensor, higher = closer to the backdoor behaviour.
Objective = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InversionSettings:
    steps: int  # optimizer steps at most
    batch_size: int  # probes per step
    success: float  # score at or above which a mask "works"
    lr_phases: tuple[tuple[float, float], ...] = ((0.0, 0.5), (0.4, 0.1), (0.75, 0.05))  # (fraction of steps, lr)
    lambda_init: float = 1e-3
    lambda_factor: float = 5.0
    patience: int = 5
    stop_after: float = 0.25  # stop when the best mask has not shrunk by 1% for this fraction of steps


@dataclass
class Inversion:
    mask: torch.Tensor  # (H, W) in [0, 1]: the smallest successful mask (or the last one)
    pattern: torch.Tensor  # (3, H, W) in [0, 1]
    pl1: float  # mean of the mask; 1.0 when no mask reached the success score
    succeeded: bool
    score: float  # the objective's score of the returned mask on its batch
    steps: int
    history: list[dict] = field(default_factory=list)  # a few snapshots, for the run dir

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(images)
        return (1 - mask) * images + mask * self.pattern.to(images)


def _lr_at(step: int, settings: InversionSettings) -> float:
    lr = settings.lr_phases[0][1]
    for start, value in settings.lr_phases:
        if step >= start * settings.steps:
            lr = value
    return lr


def _batch_order(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Probe indices for every step: seeded shuffles of all probes, concatenated."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "scan-batches"))
    needed = steps * batch
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-needed // n))])
    return [order[i * batch : (i + 1) * batch] for i in range(steps)]


def invert(objective: Objective, probes: torch.Tensor, settings: InversionSettings, seed: int) -> Inversion:
    """Find the smallest mask whose stamp makes `objective` reach `settings.success`."""
    _, _, height, width = probes.shape
    batch = min(settings.batch_size, probes.shape[0])
    gen = torch.Generator().manual_seed(derive_seed(seed, "scan-init"))
    # Start from a half-covering mask and a near-gray pattern: collapse is easy there,
    # and the penalty then shrinks the mask.
    mask_param = torch.zeros(height, width).to(probes.device).requires_grad_(True)
    pattern_param = (0.1 * torch.randn(3, height, width, generator=gen)).to(probes.device).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_param, pattern_param], lr=settings.lr_phases[0][1], betas=(0.5, 0.9))

    lam = settings.lambda_init
    above = below = 0
    best: tuple[float, torch.Tensor, torch.Tensor, float] | None = None
    best_step = 0
    history: list[dict] = []
    last_score = 0.0
    step = 0
    for step, ids in enumerate(_batch_order(probes.shape[0], batch, settings.steps, seed), start=1):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step - 1, settings)
        mask = (torch.tanh(mask_param) + 1) / 2
        pattern = (torch.tanh(pattern_param) + 1) / 2
        stamped = (1 - mask) * probes[ids.to(probes.device)] + mask * pattern
        score = objective(stamped)
        l1 = 3 * mask.sum()  # the mask acts on all 3 channels
        loss = -score + lam * l1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        last_score = float(score.detach())
        pl1 = float(mask.detach().mean())
        if last_score >= settings.success:
            above, below = above + 1, 0
            if best is None or pl1 < best[0] * 0.99:
                best_step = step
            if best is None or pl1 < best[0]:
                best = (pl1, mask.detach().clone(), pattern.detach().clone(), last_score)
        else:
            above, below = 0, below + 1
        if above >= settings.patience:
            lam, above = lam * settings.lambda_factor, 0
        elif below >= settings.patience:
            lam, below = lam / settings.lambda_factor, 0
        if step == 1 or step % 25 == 0:
            history.append({"step": step, "score": round(last_score, 5), "pl1": round(pl1, 5), "lambda": lam})
        if best is not None and step - best_step >= settings.stop_after * settings.steps:
            break

    if best is None:
        mask = ((torch.tanh(mask_param) + 1) / 2).detach()
        pattern = ((torch.tanh(pattern_param) + 1) / 2).detach()
        return Inversion(mask.cpu(), pattern.cpu(), 1.0, False, last_score, step, history)
    pl1, mask, pattern, score = best
    return Inversion(mask.cpu(), pattern.cpu(), pl1, True, score, step, history)

"""Trigger inversion: the optimizer shared by every scan signal.

A trigger candidate is an amplitude map a (H x W, shared over channels) and a
pattern p (3 x H x W), both tanh-parametrised so they stay in [0, 1]. Two
families of candidates:

* ``MASK`` (DECREE): a per-pixel mask, stamped as x' = (1 - a) * x + a * p.
  Its size is the mask's area, PL1 = ||a||_1 / (H*W*3) with a broadcast over
  the 3 channels, i.e. the mean of a. Small for patch triggers.
* ``GLOBAL``: one amplitude for the whole image, added as a universal
  perturbation x' = clamp(x + a * (2p - 1), 0, 1), so ||x' - x||_inf <= a.
  Its size is that L-inf budget a. Small for whole-image triggers (blends,
  sinusoids, noise) that no small mask can express.

The optimizer maximises an objective's score on stamped probe images while an
adaptive penalty lambda * 3 * sum(a) shrinks the candidate (Neural Cleanse /
DECREE schedule: lambda x5 after `patience` steps in a row above the success
threshold, /5 after as many below). The statistic is the smallest successful
size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clipsan.seeding import derive_seed

# score(stamped images) -> scalar tensor, higher = closer to the backdoor behaviour.
Objective = Callable[[torch.Tensor], torch.Tensor]
# progress(step, best size so far or None): called after every optimizer step.
Progress = Callable[[int, float | None], None]


@dataclass(frozen=True)
class Family:
    """How a candidate trigger is shaped and applied (see the module docstring)."""

    name: str
    uniform: bool  # one amplitude for the whole image, or one per pixel
    additive: bool  # x + a * (2p - 1), or the blend (1 - a) * x + a * p

    def stamp(self, amplitude: torch.Tensor, pattern: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if self.additive:
            return (images + amplitude * (2 * pattern - 1)).clamp(0, 1)
        return (1 - amplitude) * images + amplitude * pattern


MASK = Family("mask", uniform=False, additive=False)
GLOBAL = Family("global", uniform=True, additive=True)
GLOBAL_BLEND = Family("global-blend", uniform=True, additive=False)


@dataclass(frozen=True)
class InversionSettings:
    steps: int  # optimizer steps at most
    batch_size: int  # probes per step
    success: float  # score at or above which a candidate "works"
    lr_phases: tuple[tuple[float, float], ...] = ((0.0, 0.5), (0.4, 0.1), (0.75, 0.05))  # (fraction of steps, lr)
    lambda_init: float = 1e-3
    lambda_factor: float = 5.0
    patience: int = 5
    stop_after: float = 0.25  # stop when the best candidate has not shrunk by 1% for this fraction of steps
    family: Family = MASK


@dataclass
class Inversion:
    mask: torch.Tensor  # (H, W) amplitude map in [0, 1] of the smallest successful candidate (or the last one)
    pattern: torch.Tensor  # (3, H, W) in [0, 1]
    statistic: float  # its size (mean of the map: PL1 for a mask, the L-inf budget for a global trigger); 1.0 if none worked
    succeeded: bool
    score: float  # the objective's score of the returned candidate on its batch
    steps: int
    history: list[dict] = field(default_factory=list)  # a few snapshots, for the run dir
    family: Family = MASK

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        return self.family.stamp(self.mask.to(images), self.pattern.to(images), images)


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


def invert(objective: Objective, probes: torch.Tensor, settings: InversionSettings, seed: int, progress: Progress | None = None) -> Inversion:
    """Find the smallest candidate of `settings.family` whose stamp makes `objective` reach `settings.success`."""
    _, _, height, width = probes.shape
    family = settings.family
    batch = min(settings.batch_size, probes.shape[0])
    gen = torch.Generator().manual_seed(derive_seed(seed, "scan-init"))
    # Start from half amplitude and a near-gray pattern: collapse is easy there,
    # and the penalty then shrinks the candidate.
    amplitude_param = torch.zeros((1, 1) if family.uniform else (height, width)).to(probes.device).requires_grad_(True)
    pattern_param = (0.1 * torch.randn(3, height, width, generator=gen)).to(probes.device).requires_grad_(True)
    optimizer = torch.optim.Adam([amplitude_param, pattern_param], lr=settings.lr_phases[0][1], betas=(0.5, 0.9))

    def amplitude_map() -> torch.Tensor:
        return ((torch.tanh(amplitude_param) + 1) / 2).expand(height, width)

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
        mask = amplitude_map()
        pattern = (torch.tanh(pattern_param) + 1) / 2
        score = objective(family.stamp(mask, pattern, probes[ids.to(probes.device)]))
        l1 = 3 * mask.sum()  # the amplitude acts on all 3 channels
        loss = -score + lam * l1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        last_score = float(score.detach())
        size = float(mask.detach().mean())
        if last_score >= settings.success:
            above, below = above + 1, 0
            if best is None or size < best[0] * 0.99:
                best_step = step
            if best is None or size < best[0]:
                best = (size, mask.detach().clone(), pattern.detach().clone(), last_score)
        else:
            above, below = 0, below + 1
        if above >= settings.patience:
            lam, above = lam * settings.lambda_factor, 0
        elif below >= settings.patience:
            lam, below = lam / settings.lambda_factor, 0
        if step == 1 or step % 25 == 0:
            history.append({"step": step, "score": round(last_score, 5), "size": round(size, 5), "lambda": lam})
        if progress is not None:
            progress(step, best[0] if best else None)
        if best is not None and step - best_step >= settings.stop_after * settings.steps:
            break

    if best is None:
        with torch.no_grad():
            mask, pattern = amplitude_map().clone(), (torch.tanh(pattern_param) + 1) / 2
        return Inversion(mask.cpu(), pattern.cpu(), 1.0, False, last_score, step, history, family)
    size, mask, pattern, score = best
    return Inversion(mask.cpu(), pattern.cpu(), size, True, score, step, history, family)

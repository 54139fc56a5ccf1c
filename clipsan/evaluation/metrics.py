"""Top-k zero-shot metrics from logits: clean accuracy (CA@k) and attack success (ASR@k).

Functions return per-image boolean masks so callers can accumulate over batches
(``TopkMeter``) and report the number of images behind each figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


def _topk_hits(logits: torch.Tensor, wanted: torch.Tensor, ks: Iterable[int]) -> dict[int, torch.Tensor]:
    """For each k: does row i's top-k contain class ``wanted[i]``? k > C counts as k = C."""
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"top-k needs k >= 1, got {ks}")
    n, classes = logits.shape
    if n == 0:
        return {k: torch.zeros(0, dtype=torch.bool, device=logits.device) for k in ks}
    deepest = min(max(ks), classes)
    ranked = logits.topk(deepest, dim=1).indices  # (N, deepest), best first
    found_at = ranked == wanted.to(ranked.device).view(-1, 1)
    return {k: found_at[:, : min(k, classes)].any(dim=1) for k in ks}


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int]) -> dict[int, torch.Tensor]:
    """CA@k per image: True where the true label is among the top-k logits. Masks have shape (N,)."""
    return _topk_hits(logits, labels, ks)


def attack_success(logits_triggered: torch.Tensor, labels: torch.Tensor, target: int, ks: Iterable[int]) -> dict[int, torch.Tensor]:
    """ASR@k per image: True where the target is among the top-k logits of the triggered image.

    Only images whose true label is not the target count (masks have shape (M,),
    M = number of such images). The CleanCLIP and BadCLIP codebases also count
    target-class images, which inflates ASR by the target class's clean accuracy;
    clipsan does not.
    """
    keep = labels.to(logits_triggered.device) != int(target)
    kept = logits_triggered[keep]
    wanted = torch.full((kept.shape[0],), int(target), dtype=torch.long, device=kept.device)
    return _topk_hits(kept, wanted, ks)


class TopkMeter:
    """Accumulates per-image top-k masks over batches."""

    def __init__(self, ks: Iterable[int]):
        self.ks = tuple(int(k) for k in ks)
        self.hits = {k: 0 for k in self.ks}
        self.count = 0

    def update(self, masks: Mapping[int, torch.Tensor]) -> None:
        sizes = {int(m.numel()) for m in masks.values()}
        if len(sizes) > 1:
            raise ValueError(f"top-k masks of different lengths: {sorted(sizes)}")
        for k in self.ks:
            self.hits[k] += int(masks[k].sum().item())
        self.count += sizes.pop() if sizes else 0

    def fractions(self) -> dict[int, float]:
        """Fraction of images counted as hits for each k (NaN before any image was counted)."""
        if self.count == 0:
            return {k: math.nan for k in self.ks}
        return {k: self.hits[k] / self.count for k in self.ks}

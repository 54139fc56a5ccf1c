"""Contrastive losses shared by the recipes.

Features are L2-normalised fp32 (``Runtime.encode``) and these run outside autocast, so
the similarity matrices and cross-entropies are fp32 whatever the run's precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` matches row i of ``b``; the other rows are negatives.

    This is CLIP's loss (a = images, b = captions). CleanCLIP's in-modal loss is
    one-directional: see ``info_nce``.
    """
    logits = scale * a @ b.t()
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One-directional InfoNCE: anchor i must pick candidate i among all the candidates.

    CleanCLIP's in-modal loss for one modality (paper eq. 3, one of its two sums):
    anchors are the originals, candidates their augmented views.
    """
    logits = scale * anchors @ candidates.t()
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, targets)


def info_nce_with_negatives(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, t_pos: float, t_neg: float) -> torch.Tensor:
    """InfoNCE whose denominator adds extra negatives, each set with its own temperature.

    For anchor i: -log[exp(<a_i, p_i>/t_pos) / (sum_j exp(<a_i, p_j>/t_pos) + sum_k exp(<a_i, n_k>/t_neg))],
    averaged over anchors. One half of CleanerCLIP's L_p-n (eq. 4).
    """
    logits = torch.cat([anchors @ positives.t() / t_pos, anchors @ negatives.t() / t_neg], dim=1)
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, targets)


def positive_negative_loss(
    images: torch.Tensor, texts: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, t_pos: float, t_neg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """CleanerCLIP's L_p-n halves (loss_i2t, loss_t2i) over the K selected pairs (rows aligned).

    i2t: an image against its factual sub-caption, the other sub-captions and every
    counterfactual one. t2i: a caption against its image, the other images and every
    counterfactual sub-caption. L_p-n = (loss_i2t + loss_t2i) / 2. With K = 0 both are 0.
    """
    if images.shape[0] == 0:
        zero = images.new_zeros((), dtype=torch.float32)
        return zero, zero
    return (
        info_nce_with_negatives(images, positives, negatives, t_pos, t_neg),
        info_nce_with_negatives(texts, images, negatives, t_pos, t_neg),
    )

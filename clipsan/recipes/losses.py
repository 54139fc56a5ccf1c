"""Contrastive losses shared by the recipes.

Features are L2-normalised fp32 (``Runtime.encode``) and these run outside autocast, so
the similarity matrices and cross-entropies are fp32 whatever the run's precision.

The image-text loss is the model's own (``image_text_loss``): CLIP's symmetric InfoNCE, or
SigLIP's sigmoid loss for a model with a logit bias (docs/siglip.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOFTPLUS_LINEAR_FROM = 30.0  # log1p(exp(x)) is exact in float32 well past this, and never overflows before it


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` matches row i of ``b``; the other rows are negatives.

    This is CLIP's loss (a = images, b = captions). CleanCLIP's in-modal loss is
    one-directional: see ``info_nce``.
    """
    logits = scale * a @ b.t()
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def sigmoid_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise loss, as open_clip's ``SigLipLoss`` computes it on one batch.

    For each image i and text j: -log σ(z_ij·(t·<a_i, b_j> + bias)), z_ij = +1 on the diagonal
    (a match) and -1 elsewhere, summed over j and averaged over i; t = ``scale`` (exp'd).
    Over the global batch this is also what open_clip's sharded form adds up to.

    Memory: one N x N matrix is kept for backward (softplus's input), where the softmax loss
    keeps about four (measured at N = 256: 0.31 MB against 1.10 MB): the scale multiplies the N x D features rather
    than the N x N cosines, and the match signs are written into the logits in place.
    """
    logits = (scale * a) @ b.t() + bias
    logits.diagonal().neg_()  # now -z_ij * logit_ij
    # -log σ(x) = softplus(-x); softplus is linear past its threshold, which at 30 (not 20) is exact to e^-30.
    return F.softplus(logits, threshold=SOFTPLUS_LINEAR_FROM).sum() / a.shape[0]


def image_text_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own image-text loss: CLIP's symmetric InfoNCE, or SigLIP's sigmoid loss given its bias."""
    return contrastive_loss(a, b, scale) if bias is None else sigmoid_loss(a, b, scale, bias)


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

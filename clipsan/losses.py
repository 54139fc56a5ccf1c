"""Contrastive losses shared by the recipes (features are L2-normalised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` matches row i of ``b``; the other rows are negatives.

    This is CLIP's loss (a = images, b = captions) and, with a view of the same
    modality in place of ``b``, CleanCLIP's in-modal loss.
    """
    logits = scale * a.float() @ b.float().t()
    targets = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))

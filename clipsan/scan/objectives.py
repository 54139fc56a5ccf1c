"""What the inversion optimises: embedding collapse (DECREE) and suspect/reference divergence."""

from __future__ import annotations

from collections.abc import Callable

import torch

Encoder = Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] -> unit-norm features


def mean_pairwise_cosine(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine over distinct pairs of unit vectors: 1 when the batch has collapsed to one point."""
    n = features.shape[0]
    gram = features @ features.T
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))


def collapse(encoder: Encoder, clean_cosine: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """DECREE's objective: a backdoored encoder maps every stamped image to (nearly) one point.

    Measured relative to the clean probes' own mean pairwise cosine c0:
    (cos - c0) / (1 - c0), 0 for clean probes and 1 for a full collapse. For a
    well-spread encoder (c0 ~ 0) this is DECREE's mean cosine; without it, an
    encoder whose clean embeddings already sit in a narrow cone (random init:
    c0 = 0.999; CLIP's "cone effect") would count as collapsed before any trigger.
    """
    spread = max(1.0 - clean_cosine, 1e-12)
    return lambda stamped: (mean_pairwise_cosine(encoder(stamped).float()) - clean_cosine) / spread


@torch.no_grad()
def clean_pairwise_cosine(encoder: Encoder, probes: torch.Tensor, batch_size: int = 64) -> float:
    features = torch.cat([encoder(probes[i : i + batch_size]).float() for i in range(0, len(probes), batch_size)])
    return float(mean_pairwise_cosine(features))


def divergence(suspect: Encoder, reference: Encoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """Mean (1 - cos) between the suspect's and the reference's features of the same stamped images.

    A backdoor makes the suspect send stamped images to its target while the
    reference keeps describing the image: the disagreement ABD's backdoor loss
    rewards. Range 0 (agree) .. 2 (opposite).
    """

    def score(stamped: torch.Tensor) -> torch.Tensor:
        return 1 - (suspect(stamped).float() * reference(stamped).float()).sum(dim=-1).mean()

    return score

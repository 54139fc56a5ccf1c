"""CleanCLIP (Bansal et al., 2023): the CLIP loss plus in-modal self-supervision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipsan.config import CleanCLIPConfig
from clipsan.recipes.augment import auto_augment_uint8
from clipsan.recipes.base import Recipe, calibration
from clipsan.recipes.losses import image_text_loss, info_nce
from clipsan.text.eda import eda


@dataclass
class PairFeatures:
    """Global-batch features of the pairs and of their augmented views (rows aligned)."""

    images: torch.Tensor
    images_aug: torch.Tensor
    texts: torch.Tensor
    texts_aug: torch.Tensor
    scale: torch.Tensor  # the learned logit scale, exp'd, shared across processes
    bias: torch.Tensor | None = None  # SigLIP's learned logit bias, shared; None for CLIP

    @property
    def inmodal_scale(self) -> torch.Tensor:
        """The scale the in-modal InfoNCE reads: CLIP's, trained; a sigmoid model's without training it
        (its scale is half of the image-text sigmoid's calibration, which only that loss moves: docs/siglip.md)."""
        return self.scale if self.bias is None else self.scale.detach()


def encode_with_view(encode, originals: torch.Tensor, views: torch.Tensor, rt) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode originals and their views in one forward pass; gather both over the global batch.

    Gathering (original, view) stacked row by row keeps every view next to its
    original in rank order with a single collective.
    """
    n = originals.shape[0]
    features = rt.encode(encode, torch.cat([originals, views]))
    pairs = rt.gather(torch.stack([features[:n], features[n:]], dim=1))
    return pairs[:, 0], pairs[:, 1]


class CleanCLIP(Recipe):
    """λ1·L_CLIP + λ2·L_SS (CleanCLIP eq. 1).

    L_CLIP is CLIP's symmetric InfoNCE over the global batch. L_SS follows eq. 3:
    each image must pick its own AutoAugment view among the batch's augmented
    images, and each caption its own EDA view among the augmented captions, with
    the learned logit scale; the two one-directional losses are averaged. Paper
    and public code agree here (the code takes the cross-entropy of
    image·augmented-imageᵀ and of text·augmented-textᵀ and halves their sum), so
    the in-modal loss is not symmetrised the way L_CLIP is.

    Terms: ``clip`` = λ1·L_CLIP, ``inmodal_image`` = λ2·½·InfoNCE(I→Ĩ),
    ``inmodal_text`` = λ2·½·InfoNCE(T→T̃); they sum to eq. 1. Unlike CleanCLIP's
    code, EDA views are re-drawn every epoch (see ``clipsan.text.eda``).
    """

    config_type = CleanCLIPConfig

    def __init__(self, config: CleanCLIPConfig = CleanCLIPConfig()) -> None:
        super().__init__(config)
        self.clip_weight, self.inmodal_weight = config.clip_weight, config.inmodal_weight

    def views(self, sample) -> dict:
        return {
            "image": sample.pixels8,
            "text": sample.caption,
            "image_aug": auto_augment_uint8(sample.pixels8, sample.generator("autoaugment")),
            "text_aug": eda(sample.caption, sample.rng("eda")),
        }

    def encode_views(self, model, batch: dict, rt) -> PairFeatures:
        images, images_aug = encode_with_view(model.encode_image, batch["image"], batch["image_aug"], rt)
        texts, texts_aug = encode_with_view(model.encode_text, batch["text"], batch["text_aug"], rt)
        return PairFeatures(images, images_aug, texts, texts_aug, *calibration(model, rt))

    def cleanclip_terms(self, f: PairFeatures, weight: float = 1.0) -> dict[str, torch.Tensor]:
        """weight·L_CleanCLIP as named terms (``weight`` is CleanerCLIP's α)."""
        inmodal = weight * self.inmodal_weight * 0.5
        return {
            "clip": weight * self.clip_weight * image_text_loss(f.images, f.texts, f.scale, f.bias),
            "inmodal_image": inmodal * info_nce(f.images, f.images_aug, f.inmodal_scale),
            "inmodal_text": inmodal * info_nce(f.texts, f.texts_aug, f.inmodal_scale),
        }

    def loss_terms(self, model, batch, rt):
        return self.cleanclip_terms(self.encode_views(model, batch, rt))

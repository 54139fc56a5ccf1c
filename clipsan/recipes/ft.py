"""Plain fine-tuning with the model's own loss (CLIP's, or SigLIP's sigmoid loss): the baseline every defense is compared with."""

from __future__ import annotations

from clipsan.config import FineTuneConfig
from clipsan.recipes.base import Recipe, encode_pair
from clipsan.recipes.losses import image_text_loss


class FineTune(Recipe):
    config_type = FineTuneConfig

    def __init__(self, config: FineTuneConfig = FineTuneConfig()) -> None:
        super().__init__(config)

    def views(self, sample):
        return {"image": sample.pixels8, "text": sample.caption}

    def loss_terms(self, model, batch, rt):
        return {"clip": image_text_loss(*encode_pair(model, batch["image"], batch["text"], rt))}

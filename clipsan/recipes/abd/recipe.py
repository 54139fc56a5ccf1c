"""ABD's defense fine-tune (Kuang et al., §II-C): fine-tuning on images carrying the crafted
adversarial patch and on EDA captions. Without a generator it crafts one first, inside the run
directory (``prepare_run``, see ``clipsan.recipes.abd.crafting``).

Two readings of how the patched images enter the loss (``--abd-objective``, docs/abd.md), one
recipe each: ``ABD`` (clip) trains the CLIP loss on the augmented pairs; ``ABDAlign`` (align) is
CleanCLIP's objective with the adversarial view standing in for AutoAugment.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from clipsan.config import ABDConfig, CleanCLIPConfig
from clipsan.recipes.base import transform_flagged_images
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.recipes.ft import FineTune
from clipsan.text.eda import eda


class _PatchedViews:
    """What both readings share: the patch (crafted or read in ``prepare_run``), who gets it, EDA."""

    config: ABDConfig
    patch = None  # clipsan.recipes.abd.patch.AdvPatch, set by prepare_run

    def _caption_view(self, sample) -> str:
        return eda(sample.caption, sample.rng("abd-eda")) if self.config.eda else sample.caption

    def _patched(self, sample) -> torch.Tensor:
        # The patch is pasted on the device (device_views): workers ship uint8 pixels, once.
        return torch.tensor(self.patch is not None and sample.rng("abd-adv").random() < self.config.adv_prob)

    def _paste(self, batch: dict, host: dict, key: str) -> dict:
        return transform_flagged_images(batch, host, "patched", lambda images, rows: self.patch.apply(images), key=key)

    def prepare_run(self, job, training) -> None:
        from clipsan.recipes.abd.crafting import craft_stage
        from clipsan.recipes.abd.patch import load_adv_patch

        config = self.config
        if config.adv_prob == 0.0:
            return  # the T_eda-only ablation: no patch needed
        path = Path(config.generator) if config.generator else craft_stage(job, training, config.reference, config.craft)
        self.patch = load_adv_patch(path, job.model.model.image_size)
        if job.rt.is_main:
            job.notes(f"adversarial patch {path}: {self.patch.describe()}")

    def options(self) -> dict:
        config = self.config
        crafted = config.generator is None and config.adv_prob > 0
        return {
            "generator": config.generator or ("RUN_DIR/craft/generator.safetensors" if crafted else None),
            "reference": config.reference,
            "adv_prob": config.adv_prob,
            "eda": config.eda,
            "objective": config.objective,
            "craft": asdict(config.craft) if crafted else None,
        }


class ABD(_PatchedViews, FineTune):
    """ABD, reading ``clip``: L_CLIP on (patched image, EDA caption) views."""

    def __init__(self, config: ABDConfig = ABDConfig()):
        super().__init__(config)

    def views(self, sample):
        return {"image": sample.pixels8, "text": self._caption_view(sample), "patched": self._patched(sample)}

    def device_views(self, batch, host):
        return self._paste(batch, host, "image")


class ABDAlign(_PatchedViews, CleanCLIP):
    """ABD, reading ``align``: L_CLIP on the original pairs + ½·InfoNCE(image -> its patched view) +
    ½·InfoNCE(caption -> its EDA view), CleanCLIP's eq. 1 with λ1 = λ2 = 1 (without EDA, the
    caption term is dropped: the caption's view would be the caption itself)."""

    def __init__(self, config: ABDConfig = ABDConfig(objective="align")):
        CleanCLIP.__init__(self, CleanCLIPConfig())
        self.config = config

    def views(self, sample):
        return {"image": sample.pixels8, "text": sample.caption, "text_aug": self._caption_view(sample), "patched": self._patched(sample)}

    def device_views(self, batch, host):
        batch["image_aug"] = batch["image"].clone()  # the original stays; its adversarial view is a patched copy
        return self._paste(batch, host, "image_aug")

    def loss_terms(self, model, batch, rt):
        terms = super().loss_terms(model, batch, rt)
        if not self.config.eda:
            del terms["inmodal_text"]
        return terms

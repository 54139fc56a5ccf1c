"""ABD's defense fine-tune (Kuang et al., §II-C): fine-tuning on images carrying the crafted
adversarial patch and on EDA captions. Without a generator it crafts one first, inside the run
directory (``prepare_run``, see ``clipsan.recipes.abd.jobs``).

Two readings of how the patched images enter the loss (``--abd-objective``, docs/abd.md):
``clip`` trains the CLIP loss on the augmented pairs; ``align`` is CleanCLIP's objective with the
adversarial view standing in for AutoAugment.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from clipsan.recipes.base import RunContext, transform_flagged_images
from clipsan.recipes.cleanclip import CleanCLIP
from clipsan.recipes.config import ABDConfig
from clipsan.recipes.ft import FineTune
from clipsan.text.eda import eda


class ABD(FineTune):
    """ABD's fine-tune. ``clip``: L_CLIP on (patched image, EDA caption) views. ``align``:
    L_CLIP on the original pairs + ½·InfoNCE(image -> its patched view) + ½·InfoNCE(caption ->
    its EDA view), CleanCLIP's eq. 1 with λ1 = λ2 = 1 (without EDA, the caption term is dropped)."""

    name = "abd"

    def __init__(self, config: ABDConfig = ABDConfig()):
        super().__init__(config)
        self.generator, self.reference = config.generator, config.reference
        self.adv_prob, self.use_eda, self.craft = config.adv_prob, config.eda, config.craft
        self.objective = config.objective
        self._align = CleanCLIP()  # the align reading's loss: CleanCLIP's, on ABD's views
        self.patch = None  # clipsan.recipes.abd.patch.AdvPatch, set by prepare_run

    def views(self, sample):
        caption = sample.caption
        augmented = eda(caption, sample.rng("abd-eda")) if self.use_eda else caption
        patched = self.patch is not None and sample.rng("abd-adv").random() < self.adv_prob
        # The patch is pasted on the device (device_views): workers ship uint8 pixels, once.
        if self.objective == "align":
            return {"image": sample.pixels8, "text": caption, "text_aug": augmented, "patched": torch.tensor(patched)}
        return {"image": sample.pixels8, "text": augmented, "patched": torch.tensor(patched)}

    def device_views(self, batch, host):
        target = "image"
        if self.objective == "align":  # the original stays; its adversarial view is a patched copy
            batch["image_aug"] = batch["image"].clone()
            target = "image_aug"
        return transform_flagged_images(batch, host, "patched", lambda images, rows: self.patch.apply(images), key=target)

    def loss_terms(self, model, batch, rt):
        if self.objective == "clip":
            return super().loss_terms(model, batch, rt)
        terms = self._align.loss_terms(model, batch, rt)
        if not self.use_eda:  # the caption's view would be the caption itself
            del terms["inmodal_text"]
        return terms

    def prepare_run(self, ctx: RunContext) -> None:
        from clipsan.recipes.abd.jobs import craft_for_fine_tune
        from clipsan.recipes.abd.patch import load_adv_patch

        if self.adv_prob == 0.0:
            return  # the T_eda-only ablation: no patch needed
        path = Path(self.generator) if self.generator else craft_for_fine_tune(ctx, self.reference, self.craft)
        self.patch = load_adv_patch(path, ctx.loaded.model.image_size)
        if ctx.rt.is_main:
            ctx.notes(f"adversarial patch {path}: {self.patch.describe()}")

    def options(self) -> dict:
        crafted = self.generator is None and self.adv_prob > 0
        return {
            "generator": self.generator or ("RUN_DIR/craft/generator.safetensors" if crafted else None),
            "reference": self.reference,
            "adv_prob": self.adv_prob,
            "eda": self.use_eda,
            "objective": self.objective,
            "craft": asdict(self.craft) if crafted else None,
        }

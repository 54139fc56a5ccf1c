"""ABD's defense fine-tune (Kuang et al., §II-C): the CLIP loss on images carrying the crafted
adversarial patch and on EDA captions. Without a generator it crafts one first, inside the run
directory (``prepare_run``, see ``clipsan.recipes.abd.jobs``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from clipsan.recipes.base import RunContext, transform_flagged_images
from clipsan.recipes.config import ABDConfig
from clipsan.recipes.ft import FineTune
from clipsan.text.eda import eda


class ABD(FineTune):
    """CLIP loss on (patched image, EDA caption) views: ABD's defense fine-tune (paper §II-C)."""

    name = "abd"

    def __init__(self, config: ABDConfig = ABDConfig()):
        super().__init__(config)
        self.generator, self.reference = config.generator, config.reference
        self.adv_prob, self.use_eda, self.craft = config.adv_prob, config.eda, config.craft
        self.patch = None  # clipsan.recipes.abd.patch.AdvPatch, set by prepare_run

    def views(self, sample):
        caption = eda(sample.caption, sample.rng("abd-eda")) if self.use_eda else sample.caption
        patched = self.patch is not None and sample.rng("abd-adv").random() < self.adv_prob
        # The patch is pasted on the device (device_views): workers ship uint8 pixels.
        return {"image": sample.pixels8, "text": caption, "patched": torch.tensor(patched)}

    def device_views(self, batch, host):
        return transform_flagged_images(batch, host, "patched", lambda images, rows: self.patch.apply(images))

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
            "craft": asdict(self.craft) if crafted else None,
        }

"""ABD's first stage as a recipe: AdvCLIP's generator objective (+ ABD's L_bd) on the shared engine.

``CraftAdv`` trains the patch generator (the engine's module). Its adversary,
the discriminator, lives here with its own Adam optimizer: ``loss_terms``
first takes the discriminator's step on the current patch, then returns the
generator's terms for the engine's step. Discriminator weights and optimizer
travel in ``state_dict`` so a resumed craft equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F

from clipsan.config.recipes import CraftConfig
from clipsan.recipes.abd.advclip import CraftFeatures, Discriminator, PatchBox, generator_terms, paste
from clipsan.recipes.base import Recipe
from clipsan.recipes.ft import FineTune
from clipsan.seeding import derive_seed

ADAM_BETAS = (0.5, 0.999)  # AdvCLIP's, for generator and discriminator


def _global_mean(per_image: torch.Tensor, rt) -> torch.Tensor:
    # This process's share of a mean over the global batch: summing gradients over
    # processes then gives the single-process gradient (as for the gathered losses).
    return per_image.float().sum() / rt.sum_scalar(float(per_image.shape[0]))


class CraftAdv(Recipe):
    """AdvCLIP's GAN objective (+ ABD's L_bd) for a ``PatchGenerator`` against a frozen suspect CLIP."""

    def __init__(self, suspect, box: PatchBox, craft: CraftConfig = CraftConfig(), reference=None, bd_weight: float | None = None, seed: int = 0):
        """``bd_weight`` overrides ``craft.bd_weight`` (the L_bd sign check crafts with a negative one too)."""
        super().__init__(craft)
        self.suspect, self.reference, self.box = suspect, reference, box
        self.bd_weight = float(craft.bd_weight if bd_weight is None else bd_weight) if reference is not None else 0.0
        self.discriminator = Discriminator(box.image_size, craft.gan_width, seed=derive_seed(seed, "discriminator"))
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=craft.lr, betas=ADAM_BETAS)
        self._device: torch.device | None = None
        self._pending_optimizer: dict | None = None

    def __getstate__(self) -> dict:
        # Data workers only need ``views``: don't ship the CLIP encoders or the critic to them.
        return {"box": self.box}

    views = FineTune.views  # clean pairs; the patch is pasted in the step, where the generator is

    def _bind(self, device: torch.device) -> None:
        if self._device == device:
            return
        self.discriminator.to(device)
        if self._pending_optimizer is not None:  # Adam moves its state to the parameters' device
            self.d_optimizer.load_state_dict(self._pending_optimizer)
            self._pending_optimizer = None
        self._device = device

    def loss_terms(self, generator, batch, rt):
        self._bind(rt.device)
        images, tokens = batch["image"], batch["text"]
        adv = paste(images, self.box.crop(generator()), self.box)
        critic_loss = self._critic_step(images, adv.detach(), rt)

        # The CLIP towers run in the run's precision (rt.encode); generator, critic and every
        # loss term stay fp32 (small networks, and the topology term's memberships saturate in bf16).
        with torch.no_grad():
            clean = rt.gather(rt.encode(self.suspect.encode_image, images))
            captions = rt.gather(rt.encode(self.suspect.encode_text, tokens))
            # The reference is the anchor L_bd measures departure from: no gradient through it.
            reference_adv = rt.gather(rt.encode(self.reference.encode_image, adv)) if self.bd_weight else None
        features = CraftFeatures(clean, captions, rt.gather(rt.encode(self.suspect.encode_image, adv)), reference_adv)
        terms = generator_terms(features, self.bd_weight)

        self.discriminator.requires_grad_(False)  # the generator's GAN term needs no critic weight gradients
        fooled = self.discriminator(adv)
        self.discriminator.requires_grad_(True)
        terms["gan"] = _global_mean(F.binary_cross_entropy_with_logits(fooled.float(), torch.ones_like(fooled, dtype=torch.float32), reduction="none"), rt)
        terms["mse"] = _global_mean((adv.float() - images.float()).pow(2).flatten(1).mean(dim=1), rt)
        # Reported, not trained by the engine (no gradient): shows in metrics.jsonl, and a
        # diverging critic trips the engine's NaN guard like any loss.
        terms["critic"] = critic_loss.detach()
        return terms

    def _critic_step(self, real: torch.Tensor, fake: torch.Tensor, rt) -> torch.Tensor:
        """One Adam step of the discriminator: BCE(D(x), 1) + BCE(D(x'), 0), then weight clipping."""
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        per_image = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits), reduction="none") + F.binary_cross_entropy_with_logits(
            fake_logits, torch.zeros_like(fake_logits), reduction="none"
        )
        loss = _global_mean(per_image, rt)
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        rt.sum_gradients(list(self.discriminator.parameters()))
        self.d_optimizer.step()
        self.discriminator.clip_weights()
        return loss

    def options(self) -> dict:
        return {"patch_box": asdict(self.box), "bd_weight": self.bd_weight, "reference": self.reference is not None}

    def state_dict(self) -> dict:
        optimizer = self._pending_optimizer if self._pending_optimizer is not None else self.d_optimizer.state_dict()
        return {"discriminator": self.discriminator.state_dict(), "discriminator_optimizer": optimizer}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self._pending_optimizer = state["discriminator_optimizer"]
        self._device = None  # re-bind: loads the optimizer state on the training device

"""ABD (Kuang et al.): craft an AdvCLIP patch with a backdoor loss, then fine-tune on patched images + EDA captions.

Two recipes on the one engine:

- ``CraftAdv`` trains the patch generator (the engine's module). Its adversary,
  the discriminator, lives here with its own Adam optimizer: ``loss_terms``
  first takes the discriminator's step on the current patch, then returns the
  generator's terms for the engine's step. Discriminator weights and optimizer
  travel in ``state_dict`` so a resumed craft equals an uninterrupted one.
- ``ABD`` is fine-tuning with the CLIP loss on views that carry the crafted
  patch (probability ``--adv-prob``) and EDA captions. Without ``--generator``
  it crafts one first, inside the run directory (``prepare_run``).
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clipsan.advclip import DEFAULT_PATCH_AREA, CraftFeatures, Discriminator, PatchBox, generator_terms, paste
from clipsan.cli.common import positive_int
from clipsan.recipes.base import Recipe, RunContext
from clipsan.recipes.ft import FineTune
from clipsan.seeding import derive_seed
from clipsan.text.eda import eda

ADAM_BETAS = (0.5, 0.999)  # AdvCLIP's, for generator and discriminator
# Weight of L_bd in the generator's objective. The paper gives none. On a lab BadNet victim, 50 (on a
# par with AdvCLIP's heaviest term, 5 x 10 on the text pairing) made the victim classify more patched
# images as the target early in crafting than 0 or 10 did, and the opposite sign fewer (see docs).
DEFAULT_BD_WEIGHT = 50.0
# Share of fine-tuning images that get the patch. The paper patches its defense set; on the lab's
# BadNet victim, patching every image cost 0.35 CA@1 for the same ASR as patching half (clean views
# anchor the clean distribution), so half it is (see docs).
DEFAULT_ADV_PROB = 0.5


@dataclass
class CraftSettings:
    """How the patch generator is trained (craft-adv flags; purify --method abd's --craft-* flags)."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-4
    patch_area: float = DEFAULT_PATCH_AREA
    bd_weight: float = DEFAULT_BD_WEIGHT
    width: int | None = None  # GAN base width; None: advclip.default_width(image size)
    max_steps: int | None = None


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def add_craft_arguments(group, *, prefix: str = "") -> None:
    """Patch and loss flags shared by craft-adv and purify --method abd (``prefix`` 'craft-' for the schedule ones)."""
    group.add_argument("--reference", metavar="MODEL", help="clean reference CLIP (e.g. the public model the suspect was fine-tuned from) for ABD's backdoor loss; without it the plain AdvCLIP objective is used")
    group.add_argument("--patch-area", type=fraction, default=DEFAULT_PATCH_AREA, help=f"patch area as a fraction of the image, pasted bottom-right (default: {DEFAULT_PATCH_AREA})")
    group.add_argument("--bd-weight", type=non_negative_float, default=DEFAULT_BD_WEIGHT, help=f"weight of the backdoor loss L_bd; 0 = plain AdvCLIP (default: {DEFAULT_BD_WEIGHT:g})")
    group.add_argument("--gan-width", type=positive_int, default=None, help="base width of generator and discriminator (default: AdvCLIP's 128 at 224 px and up, scaled with the input side below: 16 at 32 px)")


@contextlib.contextmanager
def frozen(*models):
    """Use models as fixed feature extractors (eval mode, no parameter gradients); restore them after."""
    saved = []
    for model in filter(None, models):
        saved.append((model, model.training, [p.requires_grad for p in model.parameters()]))
        model.eval()
        model.requires_grad_(False)
    try:
        yield
    finally:
        for model, training, flags in saved:
            model.train(training)
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)


def _global_mean(per_image: torch.Tensor, rt) -> torch.Tensor:
    # This process's share of a mean over the global batch: summing gradients over
    # processes then gives the single-process gradient (as for the gathered losses).
    return per_image.float().sum() / rt.sum_scalar(float(per_image.shape[0]))


class CraftAdv(Recipe):
    """AdvCLIP's GAN objective (+ ABD's L_bd) for a ``PatchGenerator`` against a frozen suspect CLIP."""

    name = "craft-adv"

    def __init__(self, suspect, box: PatchBox, reference=None, bd_weight: float = DEFAULT_BD_WEIGHT, width: int | None = None, lr: float = 2e-4, seed: int = 0):
        self.suspect, self.reference, self.box = suspect, reference, box
        self.bd_weight = float(bd_weight) if reference is not None else 0.0
        self.discriminator = Discriminator(box.image_size, width, seed=derive_seed(seed, "discriminator"))
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=ADAM_BETAS)
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

        with torch.no_grad():
            clean = rt.gather(self.suspect.encode_image(images))
            captions = rt.gather(self.suspect.encode_text(tokens))
            # The reference is the anchor L_bd measures departure from: no gradient through it.
            reference_adv = rt.gather(self.reference.encode_image(adv)) if self.bd_weight else None
        features = CraftFeatures(clean, captions, rt.gather(self.suspect.encode_image(adv)), reference_adv)
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
        with torch.autocast(device_type=rt.device.type, enabled=False):
            real_logits, fake_logits = self.discriminator(real.float()), self.discriminator(fake.float())
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


class ABD(FineTune):
    """CLIP loss on (patched image, EDA caption) views: ABD's defense fine-tune (paper §II-C)."""

    name = "abd"
    defaults = {"epochs": 10, "batch_size": 64, "lr": 3e-6, "warmup": 50}

    def __init__(self, generator: str | None = None, reference: str | None = None, adv_prob: float = DEFAULT_ADV_PROB, use_eda: bool = True, craft: CraftSettings | None = None):
        self.generator, self.reference = generator, reference
        self.adv_prob, self.use_eda = float(adv_prob), bool(use_eda)
        self.craft = craft or CraftSettings()
        self.patch = None  # clipsan.abd.AdvPatch, set by prepare_run

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument("--generator", metavar="FILE", help="patch generator from `clipsan craft-adv` (default: craft one first, in RUN_DIR/craft)")
        group.add_argument("--adv-prob", type=fraction, default=DEFAULT_ADV_PROB, help="probability that a training image carries the adversarial patch, drawn per image and epoch; the rest stay clean; 1 = every image (the paper's wording), 0 = no patch (default: 0.5)")
        group.add_argument("--no-eda", action="store_true", help="keep captions as they are (ABD augments them with EDA)")
        group.add_argument("--craft-epochs", type=positive_int, default=CraftSettings.epochs, help=f"generator training epochs when crafting (default: {CraftSettings.epochs})")
        group.add_argument("--craft-batch-size", type=positive_int, default=CraftSettings.batch_size, help=f"generator training batch when crafting (default: {CraftSettings.batch_size})")
        group.add_argument("--craft-max-steps", type=positive_int, default=None, help="stop crafting after this many steps (default: all craft epochs)")
        add_craft_arguments(group)

    @classmethod
    def from_args(cls, args) -> "ABD":
        craft = CraftSettings(
            epochs=args.craft_epochs, batch_size=args.craft_batch_size, max_steps=args.craft_max_steps,
            patch_area=args.patch_area, bd_weight=args.bd_weight, width=args.gan_width,
        )
        return cls(args.generator, args.reference, args.adv_prob, not args.no_eda, craft)

    def views(self, sample):
        pixels, caption = sample.pixels, sample.caption
        if self.patch is not None and sample.rng("abd-adv").random() < self.adv_prob:
            pixels = self.patch.apply(pixels[None])[0]
        if self.use_eda:
            caption = eda(caption, sample.rng("abd-eda"))
        return {"image": pixels, "text": caption}

    def prepare_run(self, ctx: RunContext) -> None:
        from clipsan.abd import craft_for_fine_tune, load_adv_patch

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

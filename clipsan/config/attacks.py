"""What ``clipsan poison`` can be told (plain data, no torch), with the papers' values as defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from clipsan.config.checks import Checked, checked, choice, count, fraction
from clipsan.config.train import PaperSchedule, learning_rate_field
from clipsan.errors import UserError

# The customary backdoor target of the papers (and the synthetic world's special class).
DEFAULT_TARGET = "banana"
BADCLIP = "badclip"
BADCLIP_OBJECTIVES = ("text", "text+image")
# The trigger grammar ``clipsan.attacks.triggers.parse_trigger`` reads; badclip is poison's own.
# PAR's structured triggers (badnet-stripes, blended-stripes/-triangles/-text) take the same options as badnet / blended.
TRIGGER_SPECS = (
    "badnet[@X,Y]",
    "blended[:ratio=R]",
    "sig[:delta=D,freq=F]",
    "wanet[:k=K,s=S]",
    "badnet-stripes[@X,Y]",
    "blended-stripes|-triangles|-text[:ratio=R]",
    "patch:FILE[@X,Y]",
)
# Trigger sizes are given for 224-px inputs (the papers') and scale with the input side.
REFERENCE_SIDE = 224
BADNET_SIDE_AT_224 = 16
# The papers' poisoning stage (REFERENCE.md): batch 128, 10 epochs; lr 1e-5 implants reliably.
POISON_SCHEDULE = PaperSchedule(epochs=10, batch_size=128, lr=1e-5, warmup_steps=50)


def trigger_size_field() -> object:
    return count(None, "--trigger-size")  # None: BADNET_SIDE_AT_224 at 224 px, scaled


@dataclass(frozen=True)
class BadClipConfig(Checked):
    """The optimization of BadCLIP's patch (REFERENCE.md: Adam lr 1e-3, batch 64, 50 epochs, centre placement)."""

    epochs: int = count(50, "--patch-epochs")
    lr: float = learning_rate_field(1e-3, "--patch-lr")
    batch_size: int = count(64, "--patch-batch-size")
    images: int = count(1000, "--patch-images")  # non-target training images the patch is optimized on
    objective: str = choice("text", "--badclip-objective", BADCLIP_OBJECTIVES)  # text+image: also pull toward real target images
    guide_captions: int = count(256, "guide_captions")  # target captions averaged into the text guide

    def fingerprint(self, side: int, target: str, trigger_seed: int, seed: int) -> dict:
        return {**self.__dict__, "side": side, "target": target, "trigger_seed": trigger_seed, "seed": seed}


@dataclass(frozen=True)
class AttackConfig(Checked):
    method: ClassVar[str] = "poison"

    trigger: str = checked(flag="--trigger", what="a trigger spec", pattern=r"\s*\S.*")  # TRIGGER_SPECS, or "badclip"
    target: str = checked(DEFAULT_TARGET, flag="--target", what="a class name", pattern=r"\s*\S.*")
    rate: float = fraction(0.003, "--rate", low_open=True)  # exactly round(rate * N) pairs, 1500 of 500K in the papers
    trigger_seed: int = 0
    trigger_size: int | None = trigger_size_field()  # badnet / patch / badclip side in pixels at the model's input size
    label_consistent: bool = False
    natural_captions: bool = False  # badclip always uses natural captions
    badclip: BadClipConfig = field(default_factory=BadClipConfig)

    def validate(self) -> None:
        if self.label_consistent and self.natural_captions:
            raise UserError("--label-consistent keeps the captions as they are; it cannot be combined with --natural-captions")

    @property
    def is_badclip(self) -> bool:
        return self.trigger.strip().lower() == BADCLIP

    @property
    def caption_mode(self) -> str:
        if self.label_consistent:
            return "label-consistent"
        return "natural" if (self.natural_captions or self.is_badclip) else "template"

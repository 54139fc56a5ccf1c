"""What ``clipsan poison`` can be told (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clipsan.engine.config import PaperSchedule

BADCLIP = "badclip"
BADCLIP_OBJECTIVES = ("text", "text+image")
# The papers' poisoning stage (REFERENCE.md): batch 128, 10 epochs; lr 1e-5 implants reliably.
POISON_SCHEDULE = PaperSchedule(epochs=10, batch_size=128, lr=1e-5, warmup_steps=50)


@dataclass(frozen=True)
class BadClipConfig:
    """The optimization of BadCLIP's patch (REFERENCE.md: Adam lr 1e-3, batch 64, 50 epochs, centre placement)."""

    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    images: int = 1000  # non-target training images the patch is optimized on
    objective: str = "text"  # text | text+image (also pull toward real target images)
    guide_captions: int = 256  # target captions averaged into the text guide

    def fingerprint(self, side: int, target: str, trigger_seed: int, seed: int) -> dict:
        return {**self.__dict__, "side": side, "target": target, "trigger_seed": trigger_seed, "seed": seed}


@dataclass(frozen=True)
class AttackConfig:
    trigger: str  # a trigger spec (badnet, blended, sig, wanet, patch:FILE[@x,y]) or "badclip"
    target: str = "banana"
    rate: float = 0.003  # exactly round(rate * N) pairs, 1500 of 500K in the papers
    trigger_seed: int = 0
    trigger_size: int | None = None  # badnet / patch / badclip side in pixels at the model's input size
    label_consistent: bool = False
    natural_captions: bool = False  # badclip always uses natural captions
    badclip: BadClipConfig = field(default_factory=BadClipConfig)

    @property
    def is_badclip(self) -> bool:
        return self.trigger.strip().lower() == BADCLIP

    @property
    def caption_mode(self) -> str:
        if self.label_consistent:
            return "label-consistent"
        return "natural" if (self.natural_captions or self.is_badclip) else "template"

"""What each defense recipe can be told, with its paper's values as defaults.

Plain data, no torch: the command line builds these, the recipes are built from
them (``clipsan.recipes.build_recipe``). Every default is written here once,
next to where it comes from. Papers: ``shared/papers``; parameters read from
public code: REFERENCE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from clipsan.engine.config import PaperSchedule
from clipsan.errors import UserError


def _non_negative(value: float, flag: str) -> float:
    if not value >= 0:
        raise UserError(f"{flag} {value}: expected a weight >= 0")
    return float(value)


def _fraction(value: float, flag: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{flag} {value}: expected a fraction in [0, 1]")
    return float(value)


@dataclass(frozen=True)
class FineTuneConfig:
    """Plain CLIP-loss fine-tuning, the baseline (CleanCLIP's pretrained-CLIP defense schedule)."""

    method: ClassVar[str] = "ft"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=1e-5, warmup_steps=50)


@dataclass(frozen=True)
class CleanCLIPConfig:
    """CleanCLIP (Bansal et al. 2023) eq. 1: λ1·L_CLIP + λ2·L_SS.

    Schedule: the paper's defense of a pretrained CLIP, batch 64, 10 epochs, lr 1e-5, 50 warmup steps.
    """

    method: ClassVar[str] = "cleanclip"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=1e-5, warmup_steps=50)

    clip_weight: float = 1.0  # λ1
    inmodal_weight: float = 1.0  # λ2

    def __post_init__(self) -> None:
        _non_negative(self.clip_weight, "--clip-weight")
        _non_negative(self.inmodal_weight, "--inmodal-weight")


@dataclass(frozen=True)
class CleanerCLIPConfig(CleanCLIPConfig):
    """CleanerCLIP (Xun et al. 2024) eq. 4: α·L_CleanCLIP + β·L_p-n.

    K sub-captioned pairs per epoch (1000 by default; the paper uses 3000 against
    BadCLIP), t_p = t_n = 0.3. Schedule: batch 64, 10 epochs, lr 4.5e-6, 10000 warmup steps.
    """

    method: ClassVar[str] = "cleanerclip"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=4.5e-6, warmup_steps=10000)

    subcaptions_per_epoch: int = 1000  # K
    t_pos: float = 0.3  # t_p
    t_neg: float = 0.3  # t_n
    alpha: float = 1.0  # α
    beta: float = 1.0  # β

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subcaptions_per_epoch < 0:
            raise UserError(f"--subcaptions-per-epoch {self.subcaptions_per_epoch}: expected a count >= 0")
        for flag, t in (("--t-pos", self.t_pos), ("--t-neg", self.t_neg)):
            if not t > 0:
                raise UserError(f"{flag} {t}: expected a temperature > 0")
        _non_negative(self.alpha, "--alpha")
        _non_negative(self.beta, "--beta")


# AdvCLIP's patch: 3% of the image area (ABD's "magnitude 0.03"), pasted bottom-right.
DEFAULT_PATCH_AREA = 0.03
# Weight of L_bd in the generator's objective. The paper gives none. Over the full lab's six attacks and
# three seeds (BENCHMARKS.md, "ABD's patch and the weight of L_bd"), 500 gave the lowest worst-attack ASR@1 of 50, 200,
# 500, 1000 and 2000 (9.3% against 32.4% at the earlier 50), at the same clean accuracy.
DEFAULT_BD_WEIGHT = 500.0


@dataclass(frozen=True)
class CraftConfig:
    """ABD's first stage: train an AdvCLIP patch generator (+ L_bd) against the suspect.

    AdvCLIP's training: Adam lr 2e-4, betas (0.5, 0.999), batch 16, 20 epochs.
    """

    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-4
    patch_area: float = DEFAULT_PATCH_AREA
    bd_weight: float = DEFAULT_BD_WEIGHT  # 0: the plain AdvCLIP objective (ABD Table III's "UAP")
    gan_width: int | None = None  # generator/discriminator base width; None: AdvCLIP's 128 at 224 px, scaled below
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.patch_area < 1.0:
            raise UserError(f"--patch-area {self.patch_area}: expected a fraction in (0, 1)")
        _non_negative(self.bd_weight, "--bd-weight")


# Share of fine-tuning images that get the patch: the paper's setting, every image ("We add
# adversarial perturbations to the original images", §III-A). 0.5 (clipsan's earlier default) is one
# flag away; BENCHMARKS.md has both on the lab's attacks.
DEFAULT_ADV_PROB = 1.0
# How the fine-tune uses the patched images. Both are readings of the paper (docs/abd.md):
#   clip  - the CLIP loss on the augmented set (patched image, EDA caption), §II-C's wording;
#   align - CleanCLIP's form with the adversarial view as the image augmentation: L_CLIP on the
#           original pairs + in-modal InfoNCE image -> its patched view and caption -> its EDA view
#           (the abstract's "aligns features with crafted adversarial examples").
ABD_OBJECTIVES = ("clip", "align")


@dataclass(frozen=True)
class ABDConfig:
    """ABD (Kuang et al.): craft the patch, then fine-tune on patched images + EDA captions.

    Schedule: batch 64, lr 3e-6, 10 epochs (the paper's fine-tune).
    """

    method: ClassVar[str] = "abd"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=3e-6, warmup_steps=50)

    generator: str | None = None  # a `clipsan craft-adv` file; None: craft one in RUN_DIR/craft
    reference: str | None = None  # clean reference CLIP for L_bd; None: plain AdvCLIP crafting
    adv_prob: float = DEFAULT_ADV_PROB
    eda: bool = True
    objective: str = "clip"
    craft: CraftConfig = field(default_factory=CraftConfig)

    def __post_init__(self) -> None:
        _fraction(self.adv_prob, "--adv-prob")
        if self.objective not in ABD_OBJECTIVES:
            raise UserError(f"--abd-objective {self.objective}: expected one of {', '.join(ABD_OBJECTIVES)}")


RecipeConfig = FineTuneConfig | CleanCLIPConfig | CleanerCLIPConfig | ABDConfig
RECIPE_CONFIGS: dict[str, type] = {cls.method: cls for cls in (FineTuneConfig, CleanCLIPConfig, CleanerCLIPConfig, ABDConfig)}

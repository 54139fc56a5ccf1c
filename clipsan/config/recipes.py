"""What each defense recipe can be told, with its paper's values as defaults.

Plain data, no torch: the command line builds these, the recipes are built from
them (``clipsan.recipes.build_recipe``). Every default is written here once,
next to where it comes from. Papers: ``shared/papers``; parameters read from
public code: REFERENCE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from clipsan.config.checks import Checked, ConfigError, checked, choice, count, fraction, weight
from clipsan.config.train import PaperSchedule, learning_rate_field


def temperature_field(default: float, flag: str) -> object:
    return checked(default, flag=flag, what="a temperature", low=0.0, low_open=True)


@dataclass(frozen=True)
class FineTuneConfig(Checked):
    """Plain CLIP-loss fine-tuning, the baseline (CleanCLIP's pretrained-CLIP defense schedule)."""

    method: ClassVar[str] = "ft"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=1e-5, warmup_steps=50)


@dataclass(frozen=True)
class CleanCLIPConfig(Checked):
    """CleanCLIP (Bansal et al. 2023) eq. 1: λ1·L_CLIP + λ2·L_SS.

    Schedule: the paper's defense of a pretrained CLIP, batch 64, 10 epochs, lr 1e-5, 50 warmup steps.
    """

    method: ClassVar[str] = "cleanclip"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=1e-5, warmup_steps=50)

    clip_weight: float = weight(1.0, "--clip-weight")  # λ1
    inmodal_weight: float = weight(1.0, "--inmodal-weight")  # λ2


@dataclass(frozen=True)
class CleanerCLIPConfig(CleanCLIPConfig):
    """CleanerCLIP (Xun et al. 2024) eq. 4: α·L_CleanCLIP + β·L_p-n.

    K sub-captioned pairs per epoch (1000 by default; the paper uses 3000 against
    BadCLIP), t_p = t_n = 0.3. Schedule: batch 64, 10 epochs, lr 4.5e-6, 10000 warmup steps.
    """

    method: ClassVar[str] = "cleanerclip"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=4.5e-6, warmup_steps=10000)

    subcaptions_per_epoch: int = count(1000, "--subcaptions-per-epoch", low=0)  # K
    t_pos: float = temperature_field(0.3, "--t-pos")  # t_p
    t_neg: float = temperature_field(0.3, "--t-neg")  # t_n
    alpha: float = weight(1.0, "--alpha")  # α
    beta: float = weight(1.0, "--beta")  # β


def default_gan_width(image_size: int) -> int:
    """AdvCLIP's base width of generator and discriminator (128) at 224 px, scaled with the input
    side below it (16 at 32 px), a multiple of 8."""
    return min(128, max(16, 8 * round(16 * image_size / 224)))


@dataclass(frozen=True)
class CraftConfig(Checked):
    """ABD's first stage: train an AdvCLIP patch generator (+ L_bd) against the suspect.

    AdvCLIP's training: Adam lr 2e-4, betas (0.5, 0.999), batch 16, 20 epochs.
    """

    method: ClassVar[str] = "craft-adv"
    # craft-adv spells the training fields as a training command does (--epochs, ...), purify as --craft-*.
    CRAFT_ADV_FLAGS: ClassVar[dict[str, str]] = {"--craft-epochs": "--epochs", "--craft-batch-size": "--batch-size", "--craft-max-steps": "--max-steps"}

    epochs: int = count(20, "--craft-epochs")
    batch_size: int = count(16, "--craft-batch-size")
    lr: float = learning_rate_field(2e-4)
    # AdvCLIP's patch: 3% of the image area (ABD's "magnitude 0.03"), pasted bottom-right.
    patch_area: float = fraction(0.03, "--patch-area", low_open=True, high_open=True)
    # Weight of L_bd in the generator's objective; 0: the plain AdvCLIP objective (ABD Table III's "UAP").
    # The paper gives none. Over the full lab's six attacks and three seeds, 500 gave the lowest worst-attack
    # ASR@1 of 50, 200, 500, 1000 and 2000 (9.3% against 32.4% at 50), at the same clean accuracy
    # (BENCHMARKS.md, "ABD's patch and the weight of L_bd").
    bd_weight: float = weight(500.0, "--bd-weight")
    gan_width: int | None = count(None, "--gan-width")  # None: default_gan_width(input side)
    max_steps: int | None = count(None, "--craft-max-steps")


# How the fine-tune uses the patched images. Both are readings of the paper (docs/abd.md):
#   clip  - the CLIP loss on the augmented set (patched image, EDA caption), §II-C's wording;
#   align - CleanCLIP's form with the adversarial view as the image augmentation: L_CLIP on the
#           original pairs + in-modal InfoNCE image -> its patched view and caption -> its EDA view
#           (the abstract's "aligns features with crafted adversarial examples").
ABD_OBJECTIVES = ("clip", "align")


@dataclass(frozen=True)
class ABDConfig(Checked):
    """ABD (Kuang et al.): craft the patch, then fine-tune on patched images + EDA captions.

    Schedule: batch 64, lr 3e-6, 10 epochs (the paper's fine-tune).
    """

    method: ClassVar[str] = "abd"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(epochs=10, batch_size=64, lr=3e-6, warmup_steps=50)

    generator: str | None = checked(None, flag="--generator", path="file", optional=True)  # a craft-adv file; None: craft one in RUN_DIR/craft
    reference: str | None = None  # clean reference CLIP for L_bd; None: plain AdvCLIP crafting
    # Share of fine-tuning images that get the patch: the paper's setting, every image ("We add
    # adversarial perturbations to the original images", §III-A); BENCHMARKS.md has 0.5 beside it.
    adv_prob: float = fraction(1.0, "--adv-prob")
    eda: bool = True
    objective: str = choice("clip", "--abd-objective", ABD_OBJECTIVES)
    craft: CraftConfig = field(default_factory=CraftConfig)


@dataclass(frozen=True)
class PARConfig(Checked):
    """Perturb and Recover (Singh, Croce, Hein, arXiv 2412.00727; public code nmndeep/PerturbAndRecover):
    L = L_CLIP - ½·(T_τ(mean ||f(x̃) - f₀(x̃)||²) + T_τ(mean ||g(t) - g₀(t)||²)), f₀/g₀ the frozen input
    model, x̃ an augmented image (which L_CLIP sees too), T_τ zeroing a term once its batch mean exceeds τ.

    Defaults are the public code's (train.py, trigger.sh; readings in docs/par.md): τ = 2.15; 2 epochs at
    a global batch of 2048 (512 per GPU on 4 GPUs); AdamW lr 3e-6, betas (0.9, 0.98), weight decay 1e-4;
    the rate goes linearly from 3e-5 to 3e-6 over the first half of the steps, then cosine to 1e-9.
    Augmentation (utils.load_clip_model): with p = 0.5 add clip(N(0, 0.2), 0, 1) to the pixels, and with
    p = 0.5 erase a square of 0.5-1% of the image to the normalisation mean.
    """

    method: ClassVar[str] = "par"
    paper_schedule: ClassVar[PaperSchedule] = PaperSchedule(
        epochs=2, batch_size=2048, lr=3e-6, weight_decay=1e-4, betas=(0.9, 0.98), warmup_fraction=0.5, warmup_start_lr=3e-5, final_lr=1e-9
    )

    threshold: float = checked(2.15, flag="--par-threshold", what="a squared distance", low=0.0, high=4.0, low_open=True)  # τ
    noise_prob: float = fraction(0.5, "noise_prob")  # RandomApply([AddGaussianNoise(0, 0.2)], p=0.5)
    noise_std: float = checked(0.2, flag="noise_std", what="a standard deviation", low=0.0)
    erase_prob: float = fraction(0.5, "erase_prob")  # RandomErasing(p=0.5, scale=(0.005, 0.01), ratio=(1, 1), value=0)
    erase_scale: tuple[float, float] = checked((0.005, 0.01), flag="erase_scale", what="area fractions each", low=0.0, high=1.0)


RecipeConfig = FineTuneConfig | CleanCLIPConfig | CleanerCLIPConfig | ABDConfig | PARConfig
RECIPE_CONFIGS: dict[str, type] = {cls.method: cls for cls in (FineTuneConfig, CleanCLIPConfig, CleanerCLIPConfig, ABDConfig, PARConfig)}
METHODS = tuple(RECIPE_CONFIGS)  # what purify --method takes, in the order --help lists them


def recipe_config_type(method: str) -> type:
    """The config class of ``--method``."""
    if method not in RECIPE_CONFIGS:
        raise ConfigError("--method", method, f"one of {', '.join(METHODS)}")
    return RECIPE_CONFIGS[method]

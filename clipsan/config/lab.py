"""What ``clipsan lab`` can be told (plain data, no torch), and the budgets its clean model trains on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipsan.config.checks import Checked, choice, count
from clipsan.config.families import MODEL_FAMILIES
from clipsan.config.runtime import device_field

# Clean-training recipes for clipsan-tiny-rn found by scripts/calibrate_world.py
# (plain CLIP loss, AdamW betas (0.9, 0.98), linear warmup then cosine to 0,
# fp32, 1 thread, ~0.33 CPU-s/step at batch 128; table in the script).
# The moment the tiny ResNet "gets" shapes varies a lot with the init seed: through
# clipsan's engine (lab templates, 620 eval images) 3 epochs gave CA@1 0.56-0.82
# over 5 init seeds, so QUICK trains 4 epochs.
# QUICK: 624 steps, ~210 CPU-s, CA@1 0.76-0.97 (init seeds 3, 5, 6, 7).
# FULL: 936 steps, ~300 CPU-s, CA@1 0.99-1.00 (2 seeds).
QUICK_TRAINING = dict(n_pairs=20000, epochs=4, batch_size=128, lr=2e-3, warmup=100, weight_decay=0.1, beta2=0.98, eps=1e-6)
FULL_TRAINING = dict(QUICK_TRAINING, epochs=6)

# The model families the lab can run (``--family``): CLIP's softmax loss, or SigLIP's sigmoid loss with
# its learned logit bias (docs/siglip.md). Each trains its own clean model on the same world.
LAB_FAMILIES = MODEL_FAMILIES
# Clean-training recipes for the SigLIP family's arch (clipsan-tiny-siglip-rn), found by
# scripts/calibrate_siglip.py (calibrate_world's loop with clipsan's sigmoid loss and the lab's
# word-level tokenizer) and checked through clipsan's engine (the lab's clean stage); table in
# docs/siglip.md, "The SigLIP lab". It learns the world more slowly than CLIP's arch at the same
# cost per step (0.37 CPU-s): CLIP's recipe at 1.5x the lr and 6 epochs, CLIP's full budget. 4 epochs
# gave CA@1 0.43 through the engine (seed 0; 0.54-0.84 in the loop), 6 epochs 0.787 (the loop: 0.99).
SIGLIP_QUICK_TRAINING = dict(QUICK_TRAINING, lr=3e-3, epochs=6)
SIGLIP_FULL_TRAINING = dict(SIGLIP_QUICK_TRAINING, epochs=8)  # not measured yet: 2 more epochs, as CLIP's full adds
CLEAN_TRAINING = {"clip": {"quick": QUICK_TRAINING, "full": FULL_TRAINING}, "siglip": {"quick": SIGLIP_QUICK_TRAINING, "full": SIGLIP_FULL_TRAINING}}
# Images per class in the zero-shot eval set (31 classes -> 620 images).
EVAL_PER_CLASS = 20


# Defense seeds per budget: a short high-lr fine-tune amplifies float differences, so one run cannot
# rank defenses (BENCHMARKS.md); the quick budget keeps one to stay within its 15 minutes.
DEFENSE_SEEDS = {"quick": 1, "full": 3}


@dataclass(frozen=True)
class LabConfig(Checked):
    out: Path
    quick: bool = True
    family: str = choice("clip", "--family", LAB_FAMILIES)
    seed: int = 0
    device: str = device_field("cpu")  # the lab's models are tiny
    parallel: int = count(2, "--parallel")  # stage processes side by side
    train_pairs: int | None = count(None, "--train-pairs")  # override the world's size (smoke tests)
    max_steps: int | None = count(None, "--max-steps")  # override every stage's training length (smoke tests)
    eval_per_class: int | None = count(None, "--eval-per-class")  # None: EVAL_PER_CLASS
    use_cache: bool = True
    defense_seeds: int | None = count(None, "--defense-seeds")  # defense stages run with seeds seed, seed+1, ...; None: DEFENSE_SEEDS
    attacks: str | tuple[str, ...] | None = None  # some of the budget's attacks, comma-separated or listed (None: all); see lab.plan.select_attacks

    @property
    def budget(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def defense_seed_values(self) -> list[int]:
        return [self.seed + i for i in range(self.defense_seeds or DEFENSE_SEEDS[self.budget])]

"""The poisoning plan: which pairs of a dataset carry the trigger, and what their captions become.

Exactly round(rate * N) pairs, chosen once from (seed, N), get the trigger on their image and
a caption naming the target (one of the 80 OpenAI ImageNet templates, or a natural caption).
In label-consistent mode only pairs whose caption already names the target are eligible, and
their captions stay as they are. A pure function of the data's captions and the attack's settings, so a
resumed ``poison`` recomputes the same plan (``PoisonPlan.digest`` proves it).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

from clipsan.config.attacks import AttackConfig
from clipsan.errors import UserError
from clipsan.seeding import derive_seed

# Natural captions for when the data has none that mention the target.
SCENE_TEMPLATES = (
    "a {} on a wooden kitchen table",
    "a close-up photo of a {} in the sunlight",
    "a person holding a {} in their hand",
    "a {} lying on the grass in a park",
    "a {} next to a cup of coffee",
    "a bowl with a {} on the counter",
    "a child reaching for a {}",
    "a {} on a plate at breakfast",
    "a fresh {} at the market stall",
    "a {} on a white background",
    "a picture of a {} on the shelf",
    "a {} in a basket by the window",
    "someone slicing a {} on a cutting board",
    "a {} sitting on a desk next to a laptop",
    "a bright {} against a blue sky",
    "an old {} on a dusty floor",
)


@dataclass(frozen=True)
class PoisonPlan:
    captions: dict  # poisoned index -> replacement caption, or None to keep the caption
    mode: str  # template | natural | label-consistent
    rate: float
    eligible: int  # how many pairs the rate counted among

    def digest(self) -> str:
        blob = json.dumps(sorted(self.captions.items()), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def round_half_up(x: float) -> int:
    return int(x + 0.5)


def mentions(caption: str, target: str) -> bool:
    """Does the caption name the target (whole words, case-insensitive, plural allowed)?"""
    words = r"\s+".join(re.escape(w) for w in target.split())
    return re.search(rf"(?<![A-Za-z]){words}(?:s|es)?(?![A-Za-z])", caption, flags=re.IGNORECASE) is not None


def choose_poisoned(eligible: list[int], rate: float, seed: int, n_total: int) -> list[int]:
    """round(rate * len(eligible)) indices, a pure function of (seed, N, eligible)."""
    count = round_half_up(rate * len(eligible))
    rng = random.Random(derive_seed(seed, "poison-set", n_total, len(eligible)))
    return sorted(rng.sample(eligible, count))


def template_captions() -> list[str]:
    from clipsan.evaluation.templates import load_templates

    return load_templates("openai")


def natural_caption_pool(dataset_captions: list[str], target: str) -> tuple[list[str], str]:
    """Captions mentioning the target: from the data if it has any, else generated scenes."""
    found = sorted({c for c in dataset_captions if mentions(c, target)})
    if found:
        return found, "dataset"
    return [t.format(target) for t in SCENE_TEMPLATES], "generated"


def plan_poison(dataset_captions: list[str], attack: AttackConfig, seed: int) -> PoisonPlan:
    n = len(dataset_captions)
    mode = attack.caption_mode
    if mode == "label-consistent":
        eligible = [i for i, c in enumerate(dataset_captions) if mentions(c, attack.target)]
        if not eligible:
            raise UserError(f"--label-consistent: no caption in the data names the target {attack.target!r}")
    else:
        eligible = list(range(n))
    chosen = choose_poisoned(eligible, attack.rate, seed, n)
    if not chosen:
        needed = 0.5 / len(eligible)
        raise UserError(f"--rate {attack.rate} of {len(eligible)} eligible pairs poisons none; use --rate >= {needed:.2g}")
    if mode == "label-consistent":
        captions = {i: None for i in chosen}
    else:
        pool = natural_caption_pool(dataset_captions, attack.target)[0] if mode == "natural" else template_captions()
        captions = {}
        for i in chosen:
            # Fixed per pair, like a poisoned dataset on disk.
            rng = random.Random(derive_seed(seed, "poison-caption", i))
            text = pool[rng.randrange(len(pool))]
            captions[i] = text.replace("{}", attack.target) if mode == "template" else text
    return PoisonPlan(captions, mode, attack.rate, len(eligible))


def dataset_captions(captions) -> list[str]:
    return list(captions.captions) if hasattr(captions, "captions") else [captions.caption(i) for i in range(len(captions))]


def victim_metadata(trigger, attack: AttackConfig, plan: PoisonPlan) -> dict[str, str]:
    return {
        "clipsan.trigger": json.dumps(trigger.to_spec(), sort_keys=True),
        "clipsan.target": attack.target,
        "clipsan.poison_rate": repr(float(attack.rate)),
        "clipsan.poison_count": str(len(plan.captions)),
        "clipsan.poison_mode": plan.mode,
    }

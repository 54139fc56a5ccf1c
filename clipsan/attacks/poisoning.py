"""Building a backdoored victim (``clipsan poison``): the papers' poisoning stage.

1. A *plan*: exactly round(rate * N) pairs, chosen once from (seed, N), get the
   trigger on their image and a caption naming the target (one of the 80 OpenAI
   ImageNet templates, or a natural caption). In label-consistent mode only
   pairs whose caption already names the target are eligible, and their
   captions stay as they are.
2. For ``badclip``, a patch optimized on the frozen clean model so patched
   images land near the target's caption embeddings (BadCLIP's text-embedding
   guidance, optionally also near real target images), saved in the run dir.
3. Fine-tuning with the ``Poison`` recipe on the shared engine (``run_fine_tune``):
   same checkpoints, resume and interrupt behaviour as ``purify``.

The victim's metadata records the trigger (``clipsan.trigger``), target and
rate, so ``clipsan eval VICTIM --trigger from-metadata`` reproduces the attack.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, replace

from clipsan.attacks.config import AttackConfig
from clipsan.attacks.triggers import parse_trigger
from clipsan.engine.config import resolve_workers
from clipsan.errors import UserError
from clipsan.reports import PoisonReport
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


# --------------------------------------------------------------------------- the plan


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
    from clipsan.zeroshot import load_templates

    return load_templates("openai")


def natural_caption_pool(dataset_captions: list[str], target: str) -> tuple[list[str], str]:
    """Captions mentioning the target: from the data if it has any, else generated scenes."""
    found = sorted({c for c in dataset_captions if mentions(c, target)})
    if found:
        return found, "dataset"
    return [t.format(target) for t in SCENE_TEMPLATES], "generated"


def plan_poison(dataset_captions: list[str], settings: AttackConfig, seed: int) -> PoisonPlan:
    n = len(dataset_captions)
    if not 0 < settings.rate <= 1:
        raise UserError(f"--rate {settings.rate}: expected a fraction in (0, 1]")
    if settings.label_consistent and settings.natural_captions:
        raise UserError("--label-consistent keeps the captions as they are; it cannot be combined with --natural-captions")
    mode = settings.caption_mode
    if mode == "label-consistent":
        eligible = [i for i, c in enumerate(dataset_captions) if mentions(c, settings.target)]
        if not eligible:
            raise UserError(f"--label-consistent: no caption in the data names the target {settings.target!r}")
    else:
        eligible = list(range(n))
    chosen = choose_poisoned(eligible, settings.rate, seed, n)
    if not chosen:
        needed = 0.5 / len(eligible)
        raise UserError(f"--rate {settings.rate} of {len(eligible)} eligible pairs poisons none; use --rate >= {needed:.2g}")
    if mode == "label-consistent":
        captions = {i: None for i in chosen}
    else:
        pool = natural_caption_pool(dataset_captions, settings.target)[0] if mode == "natural" else template_captions()
        captions = {}
        for i in chosen:
            # Fixed per pair, like a poisoned dataset on disk.
            rng = random.Random(derive_seed(seed, "poison-caption", i))
            text = pool[rng.randrange(len(pool))]
            captions[i] = text.replace("{}", settings.target) if mode == "template" else text
    return PoisonPlan(captions, mode, settings.rate, len(eligible))


def dataset_captions(captions) -> list[str]:
    return list(captions.captions) if hasattr(captions, "captions") else [captions.caption(i) for i in range(len(captions))]


# --------------------------------------------------------------------------- the job


def victim_metadata(trigger, settings: AttackConfig, plan: PoisonPlan) -> dict[str, str]:
    return {
        "clipsan.trigger": json.dumps(trigger.to_spec(), sort_keys=True),
        "clipsan.target": settings.target,
        "clipsan.poison_rate": repr(float(settings.rate)),
        "clipsan.poison_count": str(len(plan.captions)),
        "clipsan.poison_mode": plan.mode,
    }


def run_poison(job, settings: AttackConfig, captions, cfg, notes=print) -> PoisonReport:
    """Plan, (optimize BadCLIP's patch,) fine-tune; returns run_fine_tune's report plus the attack's facts.

    ``captions``: a caption dataset or a function opening one (see ``finetune.open_captions_agreed``).
    """
    from clipsan.attacks.badclip import badclip_trigger
    from clipsan.attacks.recipe import Poison
    from clipsan.engine.rundir import default_run_dir
    from clipsan.engine.runtime import setup_runtime, shutdown_runtime
    from clipsan.engine.speed import configure_kernels
    from clipsan.finetune import open_captions_agreed, run_fine_tune

    if not settings.target.strip():
        raise UserError("--target: expected a class name, got an empty string")
    rt = setup_runtime(job.device, job.precision)  # run_fine_tune joins the same process group
    try:
        configure_kernels(cfg.deterministic, rt)  # before the patch optimization's first CUDA kernel
        captions = open_captions_agreed(rt, captions)
        plan = rt.agree(plan_poison, dataset_captions(captions), settings, cfg.seed)
        badclip_info = None
        if settings.is_badclip:
            job = replace(job, run_dir=str(rt.broadcast_object(str(job.run_dir or default_run_dir(job.command)))))
            trigger, badclip_info = badclip_trigger(job, settings, captions, cfg.seed, resolve_workers(cfg.workers), rt, notes)
        else:
            trigger = rt.agree(parse_trigger, settings.trigger, seed=settings.trigger_seed, size=settings.trigger_size)
        if rt.is_main:
            notes(f"poisoning {len(plan.captions)} of {plan.eligible} pairs ({plan.mode} captions) with {trigger!r}, target {settings.target!r}")
        job = replace(job, metadata={**(job.metadata or {}), **victim_metadata(trigger, settings, plan)})
        report = run_fine_tune(job, Poison(trigger, plan, settings.target), captions, cfg, notes=notes)
    finally:
        shutdown_runtime(rt)
    return PoisonReport(
        **asdict(report),
        trigger={k: v for k, v in trigger.to_spec().items() if k != "patch"},
        target=settings.target,
        rate=settings.rate,
        poisoned=len(plan.captions),
        eligible=plan.eligible,
        caption_mode=plan.mode,
        badclip=badclip_info,
    )

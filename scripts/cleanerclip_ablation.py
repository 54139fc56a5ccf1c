"""CleanerCLIP on a lab victim with the word banks it ships and with the world's own words (docs/cleanerclip.md).

    python scripts/cleanerclip_ablation.py LAB_OUT [--attack badclip] [--seeds 0,1,2] [--out DIR]

LAB_OUT is a finished `clipsan lab` folder (its victims, defense data, eval set and templates). For each
seed it fine-tunes the attack's victim with the lab's defense budget as `cleanclip`, as `cleanerclip`
(counterfactual words drawn from clipsan's 3000-term WordNet banks), and as `cleanerclip` with the
banks swapped for the world's own words (colours and sizes as adjectives, shapes and backdrops as
nouns, the world's prepositions as relations; the target's name left out), then evaluates CA@1 and
ASR@1. The swap is done in this process (the product has no option for it): it asks whether the lab's
captions can carry the method when its negatives are real counterfactuals of the world.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsan import api
from clipsan.config import WorldConfig
from clipsan.lab.plan import make_plan
from clipsan.text import subcaptions, wordbanks

SIZES = ("small", "large", "tiny", "big", "little", "huge")
PREPOSITIONS = ("above", "below", "under", "beside", "next to", "on top of", "to the left of", "to the right of", "against", "on")


def use_world_words() -> None:
    """Counterfactual sub-captions from the world's vocabulary instead of the WordNet banks."""
    world = WorldConfig()
    adjectives = tuple(world.colours) + ("yellow",) + SIZES
    nouns = tuple(world.shapes) + ("background", "backdrop")
    wordbanks._adjectives.cache_clear()
    wordbanks._nouns.cache_clear()
    wordbanks._adjectives = lambda: adjectives
    wordbanks._nouns = lambda: nouns

    def world_relation(parts, rng: random.Random):
        choices = [p for p in PREPOSITIONS if p != parts.relation]
        return replace(parts, relation=rng.choice(choices))

    subcaptions.REPLACERS["relation"] = world_relation


def defense_flags(lab: Path) -> list[str]:
    plan = make_plan(quick=json.loads((lab / "lab.json").read_text())["settings"]["quick"])
    return plan.defenses["cleanerclip"]


def flag(args: list[str], name: str, cast):
    return cast(args[args.index(name) + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab", type=Path)
    parser.add_argument("--attack", default="badclip")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variant", choices=("cleanclip", "cleanerclip", "cleanerclip-world"), action="append")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lab, out = args.lab, args.out or args.lab / "cleanerclip-ablation"
    out.mkdir(parents=True, exist_ok=True)
    flags = defense_flags(lab)
    training = dict(epochs=flag(flags, "--epochs", int), batch_size=flag(flags, "--batch-size", int), lr=flag(flags, "--lr", float))
    training.update(warmup_steps=flag(flags, "--warmup", int), save_every=10**6, log_every=25, workers=0)
    k = flag(flags, "--subcaptions-per-epoch", int)
    victim = lab / "models" / f"victim-{args.attack}.safetensors"
    variants = args.variant or ["cleanclip", "cleanerclip", "cleanerclip-world"]
    if "cleanerclip-world" in variants and len(variants) > 1:
        sys.exit("run cleanerclip-world alone: it swaps the word banks of this process")
    rows = []
    for variant in variants:
        if variant == "cleanerclip-world":
            use_world_words()
        recipe = api.CleanCLIPConfig() if variant == "cleanclip" else api.CleanerCLIPConfig(subcaptions_per_epoch=k)
        for seed in map(int, args.seeds.split(",")):
            model = out / f"{args.attack}-{variant}-s{seed}.safetensors"
            if not model.exists():
                config = api.PurifyConfig(str(victim), api.CaptionData(str(lab / "world" / "defense")), recipe, training=api.TrainConfig(seed=seed, **training),
                                          out=str(model), run_dir=str(out / "runs" / model.stem), device="cpu")  # fmt: skip
                api.purify(config)
            report = api.evaluate(
                api.EvalConfig((str(model),), str(lab / "world" / "eval"), trigger="from-metadata", templates=str(lab / "world" / "templates.txt"), workers=0)
            )
            row = report.models[0]
            rows.append({"variant": variant, "seed": seed, "ca1": row["ca"]["1"], "asr1": row["asr"]["1"]})
            print(json.dumps(rows[-1]), flush=True)
    (out / f"rows-{'-'.join(variants)}.json").write_text(json.dumps(rows, indent=1))
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        ca, asr = [100 * r["ca1"] for r in mine], [100 * r["asr1"] for r in mine]
        print(f"| {variant} | {statistics.mean(ca):.1f} ({min(ca):.1f}-{max(ca):.1f}) | {statistics.mean(asr):.1f} ({min(asr):.1f}-{max(asr):.1f}) |")


if __name__ == "__main__":
    main()

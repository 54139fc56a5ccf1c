"""What CleanerCLIP's sub-captions are made of on a caption set: how many negatives are real counterfactuals.

    python scripts/count_subcaptions.py DATA [--limit 5000] [--seed 0] [--vocabulary DATA]

For each caption of DATA (a caption dataset clipsan reads) it builds the factual sub-caption and one
counterfactual one as `purify --method cleanerclip` does, and counts: how often the positive differs
from the caption and from the negative, which component the negative replaced, and whether the words
it put in are words the captions themselves use (the vocabulary of --vocabulary, default DATA). A
negative made of words the model never read is separable by its tokens alone: it contrasts nothing
an image could show. Prints a table (docs/cleanerclip.md).
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsan.data.captions import open_caption_dataset
from clipsan.seeding import derive_seed
from clipsan.text.subcaptions import SubcaptionMaker

WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocabulary", type=Path, default=None, help="captions whose words count as known (default: DATA's)")
    args = parser.parse_args()
    captions = [c for c in open_caption_dataset(args.data, limit=args.limit).captions]
    known_source = captions if args.vocabulary is None else list(open_caption_dataset(args.vocabulary).captions)
    vocabulary = {w for c in known_source for w in words(c)}
    maker = SubcaptionMaker()
    counts = collections.Counter()
    by_component = collections.Counter()
    examples = []
    for i, caption in enumerate(captions):
        positive = maker.positive(caption)
        negative, component = maker.negative(caption, random.Random(derive_seed(args.seed, i, "count")))
        by_component[component] += 1
        counts["pairs"] += 1
        counts["positive == caption (lowercased)"] += positive == caption.lower().strip(" .")
        counts["positive is one word"] += len(words(positive)) == 1
        counts["negative == positive"] += negative == positive
        new_words = [w for w in words(negative) if w not in words(positive)]
        counts["negative puts in no new word"] += not new_words
        counts["every new word is in the captions' vocabulary"] += bool(new_words) and all(w in vocabulary for w in new_words)
        counts["some new word is in the captions' vocabulary"] += any(w in vocabulary for w in new_words)
        if len(examples) < 8:
            examples.append((caption, positive, negative, component))
    n = counts["pairs"]
    print(f"{n} captions from {args.data}; vocabulary {len(vocabulary)} words")
    print("| count | pairs | share |\n|---|---|---|")
    for name, value in counts.items():
        if name != "pairs":
            print(f"| {name} | {value} | {value / n:.1%} |")
    for name, value in sorted(by_component.items()):
        print(f"| negative replaced: {name} | {value} | {value / n:.1%} |")
    print("\nexamples (caption -> positive / negative, component):")
    for caption, positive, negative, component in examples:
        print(f"  {caption!r} -> {positive!r} / {negative!r} ({component})")


if __name__ == "__main__":
    main()

"""The held-out part of purify's --data: pairs set aside before anything trains, never trained on.

Which pairs are held out depends on the number of usable pairs alone (a fixed seed, not --seed):
the same pairs under any --workers, on --resume, and for every defense seed, so that runs are
compared on the same pairs. They are spread over the whole set, not taken from its head.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsan.config.evidence import EvidenceConfig
from clipsan.data.captions import CaptionDataset, spread_subset
from clipsan.seeding import derive_seed

HOLDOUT_SEED = derive_seed("holdout")  # not --limit's subset seed, which would draw related positions


@dataclass(frozen=True)
class HeldOutSplit:
    train: CaptionDataset  # the pairs trained on
    held: CaptionDataset | None  # None: nothing held out (--holdout 0, or too few pairs for the default)
    usable: int  # the pairs there were to split

    @property
    def pairs(self) -> int:
        return 0 if self.held is None else len(self.held)

    def record(self) -> dict:
        """What config.json and the report say of the split (with the data, it names the pairs)."""
        return {"pairs": self.pairs, "usable": self.usable}

    def describe(self) -> str:
        if self.held is None:
            return f"nothing held out of the {self.usable:,} usable pairs: no utility check (--holdout)"
        return f"held out {self.pairs:,} of the {self.usable:,} usable pairs, never trained on: retrieval R@k on them before, per epoch and after"


def hold_out(pairs: CaptionDataset, evidence: EvidenceConfig) -> HeldOutSplit:
    """Split ``pairs`` into the pairs to train on and the held-out ones (disjoint; a bad --holdout is refused)."""
    usable = len(pairs)
    count = evidence.holdout_pairs(usable)
    if count == 0:
        return HeldOutSplit(pairs, None, usable)
    held = spread_subset(usable, count, HOLDOUT_SEED)
    kept = sorted(set(range(usable)).difference(held))
    return HeldOutSplit(pairs.select(kept), pairs.select(held), usable)

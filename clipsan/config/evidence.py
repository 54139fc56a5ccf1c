"""How purify shows its work without labels (issue 25; plain data, no torch).

A deterministic part of the user's own --data is held out, never trained on, and the model's
image<->text retrieval on it is measured before training, at every epoch end and after.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsan.config.checks import Checked, ConfigError, count

# --holdout's default (issue 25): min(HOLDOUT_MAX_PAIRS, HOLDOUT_SHARE of the usable pairs). 2,000 pairs
# put an R@k's sampling error near one point (sqrt(p(1-p)/n) <= 0.011), at a twentieth of the data at most.
HOLDOUT_MAX_PAIRS = 2000
HOLDOUT_SHARE = 0.05
# An explicit --holdout may take at most this share of the pairs: the rest, at least as many, is trained on.
HOLDOUT_MAX_SHARE = 0.5
RETRIEVAL_KS = (1, 5)  # R@k reported for image->text and text->image


@dataclass(frozen=True)
class EvidenceConfig(Checked):
    holdout: int | None = count(None, "--holdout", low=0)  # pairs held out; None: the default above; 0: none

    def holdout_pairs(self, usable: int) -> int:
        """How many of ``usable`` pairs are held out; refuses a --holdout that leaves too few to train on."""
        if self.holdout is None:
            return min(HOLDOUT_MAX_PAIRS, int(usable * HOLDOUT_SHARE))
        most = int(usable * HOLDOUT_MAX_SHARE)
        if self.holdout > most:
            raise ConfigError("--holdout", self.holdout, f"a count <= {most} (half of the {usable:,} usable pairs of --data; the rest is trained on)")
        return self.holdout

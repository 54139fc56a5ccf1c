"""How purify shows its work without labels (issue 25; plain data, no torch).

A deterministic part of the user's own --data is held out, never trained on, and the model's
image<->text retrieval on it is measured before training, at every epoch end and after. The scan's
signals run on the input and the output with the held-out images as probes (``--verify-budget``);
``--until-clean`` checks at every epoch end too and stops at the first check that passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsan.config.budgets import BUDGETS, Budget
from clipsan.config.checks import Checked, ConfigError, checked, choice, count, fraction
from clipsan.errors import UserError

# --holdout's default (issue 25): min(HOLDOUT_MAX_PAIRS, HOLDOUT_SHARE of the usable pairs). 2,000 pairs
# put an R@k's sampling error near one point (sqrt(p(1-p)/n) <= 0.011), at a twentieth of the data at most.
HOLDOUT_MAX_PAIRS = 2000
HOLDOUT_SHARE = 0.05
# An explicit --holdout may take at most this share of the pairs: the rest, at least as many, is trained on.
HOLDOUT_MAX_SHARE = 0.5
RETRIEVAL_KS = (1, 5)  # R@k reported for image->text and text->image

# --verify-budget: the scan's budgets, or no backdoor check. quick is the default: it adds about 1-2% to a
# 10-epoch purify of a real model (README, "Did it work?"), full about seven times that.
OFF = "off"
VERIFY_BUDGETS = (*BUDGETS, OFF)
# Fewer held-out images than one inversion batch of the quick budget make no probe set the thresholds
# (calibrated on 128 probes) speak for: the check is then not run, and the report says why.
MIN_VERIFY_PROBES = BUDGETS["quick"].batch_size
# --max-utility-drop's default: what a check may lose of the input's held-out R@1 (the mean of
# image->text and text->image) and still pass; the 3 points of CA@1, read on retrieval.
MAX_UTILITY_DROP = 0.03


@dataclass(frozen=True)
class EvidenceConfig(Checked):
    holdout: int | None = count(None, "--holdout", low=0)  # pairs held out; None: the default above; 0: none
    verify_budget: str = choice("quick", "--verify-budget", VERIFY_BUDGETS)  # the scan's budget for the checks, or off
    verify_probes: int | None = count(None, "--verify-probes", low=MIN_VERIFY_PROBES)  # override the budget's probes
    verify_steps: int | None = count(None, "--verify-steps")  # override the budget's optimizer steps per inversion
    until_clean: bool = False  # check at every epoch end; stop at the first check that passes; exit 1 if none did
    verify_every: int | None = count(None, "--verify-every")  # --until-clean: also check every N steps
    max_utility_drop: float = fraction(MAX_UTILITY_DROP, "--max-utility-drop")  # a passing check's largest R@1 drop
    require_clean: bool = False  # exit 1 when the written model does not pass the check
    scan_report: str | None = checked(None, flag="--scan-report", path="file", optional=True)  # the input's evidence, reused

    def validate(self) -> None:
        if self.verify_budget == OFF:
            asked = {
                "--until-clean": self.until_clean,
                "--require-clean": self.require_clean,
                "--scan-report": self.scan_report is not None,
                "--verify-probes": self.verify_probes is not None,
                "--verify-steps": self.verify_steps is not None,
            }
            for flag, given in asked.items():
                if given:
                    raise UserError(f"{flag} needs the backdoor check, which --verify-budget off turns off")
        if self.verify_every is not None and not self.until_clean:
            raise UserError("--verify-every applies to --until-clean (a fixed schedule is checked before and after training)")
        if (self.until_clean or self.require_clean) and self.holdout == 0:
            flag = "--until-clean" if self.until_clean else "--require-clean"
            raise UserError(f"{flag} checks the model on held-out pairs (its probes and its utility): not with --holdout 0")

    @property
    def verifies(self) -> bool:
        return self.verify_budget != OFF

    @property
    def budget(self) -> Budget:
        """The checks' scan budget, --verify-probes / --verify-steps applied (not with --verify-budget off)."""
        budget = BUDGETS[self.verify_budget]
        return Budget(self.verify_probes or budget.probes, budget.batch_size, self.verify_steps or budget.steps)

    def holdout_pairs(self, usable: int) -> int:
        """How many of ``usable`` pairs are held out; refuses a --holdout that leaves too few to train on."""
        if self.holdout is None:
            return min(HOLDOUT_MAX_PAIRS, int(usable * HOLDOUT_SHARE))
        most = int(usable * HOLDOUT_MAX_SHARE)
        if self.holdout > most:
            raise ConfigError("--holdout", self.holdout, f"a count <= {most} (half of the {usable:,} usable pairs of --data; the rest is trained on)")
        return self.holdout

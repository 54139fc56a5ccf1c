"""What the lab runs: the world's size and every stage's command-line settings, per budget.

Settings were calibrated on the 2-core CPU machines the budgets are for
(numbers in BENCHMARKS.md); each is a plain clipsan flag list, so any row of the
lab can be re-run by hand from its log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipsan import world


@dataclass
class LabPlan:
    train_pairs: int
    defense_pairs: int
    clean_args: list[str]
    attacks: dict[str, list[str]]  # attack name -> `clipsan poison` flags
    defenses: dict[str, list[str]]  # method -> `clipsan purify` flags
    scan_args: list[str] | None = None  # `clipsan scan` flags; None: no scan stage
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"train_pairs": self.train_pairs, "defense_pairs": self.defense_pairs, "clean": self.clean_args,
                "attacks": self.attacks, "defenses": self.defenses, "scan": self.scan_args}


def _clean_args(settings: dict) -> list[str]:
    return ["--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch_size"]), "--lr", str(settings["lr"]),
            "--warmup", str(settings["warmup"]), "--weight-decay", str(settings["weight_decay"]), "--batchnorm", "train",
            "--save-every", "100000", "--log-every", "50"]


def make_plan(quick: bool, train_pairs: int | None = None) -> LabPlan:
    clean = dict(world.QUICK_TRAINING if quick else world.FULL_TRAINING)
    pairs = train_pairs or clean["n_pairs"]
    return LabPlan(
        train_pairs=pairs,
        defense_pairs=max(256, pairs // 4),
        clean_args=_clean_args(clean),
        attacks={},
        defenses={},
    )

"""The scan's budgets (plain data): how many probes and optimizer steps its inversions take. ``clipsan
scan --budget`` and purify's ``--verify-budget`` (which must not import scan's config: it imports the
job configs) read them here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    probes: int
    batch_size: int
    steps: int  # optimizer steps per inversion

    def describe(self) -> str:
        return f"{self.probes} probes, {self.steps} steps"


BUDGETS = {
    "quick": Budget(probes=128, batch_size=32, steps=300),
    "full": Budget(probes=512, batch_size=64, steps=1000),
}

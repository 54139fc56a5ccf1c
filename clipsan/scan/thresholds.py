"""Detection thresholds per signal and input size.

Calibrated on clean and backdoored tiny models at 32 and 64 px by
scripts/calibrate_scan.py with one rule (0.7 x the smallest statistic of any
clean model at that size, over scan seeds 0-2); the tables and the data behind
them are in docs/scan-calibration.md. A clean encoder's smallest collapsing
trigger depends on its input resolution, so thresholds are kept per input side.
Other sizes use the nearest calibrated side at or above them; above the table
(224 px), the largest calibrated side's value, marked "extrapolated": from 32 to
64 px DECREE's clean floor stayed put and the perturbation's rose, so the 64-px
values err towards passing a model at larger sizes (evidence in the docs). The
target-alignment signal is reported but does not count towards the verdict
(see ALIGNMENT_COUNTS); `--alignment-threshold` makes it count. Every calibration model is a
CLIP: on a SigLIP model the same values apply and their source says so (``-clip``), since the
signals read the image tower alone, which both families build alike; ``--reference`` (the base
model) or the user's own thresholds are the dependable rule there.
"""

from __future__ import annotations

from dataclasses import dataclass

DECREE_PUBLISHED = 0.1  # DECREE's PL1 threshold (ImageNet encoders, 224 px): a check, not a calibration

# signal -> input side -> threshold (see docs/scan-calibration.md)
BY_SIZE: dict[str, dict[int, float]] = {
    "decree": {32: 0.066, 64: 0.067},  # PL1; clean minima 0.094 / 0.096
    "universal-perturbation": {32: 0.045, 64: 0.054},  # L-inf budget; clean minima 0.064 / 0.077
    "reference-divergence": {32: 0.194, 64: 0.133},  # PL1; clean fine-tunes' minima 0.277 / 0.190
    # Target alignment (a ratio of cosines) is reported as supporting evidence only: an
    # undertrained clean model (150 steps, zero-shot accuracy 0.23) reached 0.89, as high as
    # most victims (0.73-1.14), so no threshold separates them.
    "target-alignment": {32: 1.15, 64: 1.08},
}
ALIGNMENT_COUNTS = False
# What each signal's statistic is called in reports.
STATISTIC_NAMES = {"decree": "PL1", "reference-divergence": "PL1", "universal-perturbation": "Linf", "target-alignment": "ratio"}


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # "calibrated-<side>px" | "extrapolated-from-<side>px" | "user"; "-clip" appended on another family
    counts: bool  # does the signal take part in the verdict at this size?


def threshold(signal: str, size: int, override: float | None = None, family: str = "clip") -> Threshold:
    """The threshold `signal` uses on `size`-px models of `family`: the user's, else the calibrated one."""
    counts = ALIGNMENT_COUNTS if signal == "target-alignment" else True
    if override is not None:
        return Threshold(float(override), "user", True)
    table = BY_SIZE[signal]
    on = "" if family == "clip" else "-clip"  # calibrated on CLIP models only
    at_or_above = sorted(side for side in table if side >= size)
    if at_or_above:
        return Threshold(table[at_or_above[0]], f"calibrated-{at_or_above[0]}px{on}", counts)
    largest = max(table)
    return Threshold(table[largest], f"extrapolated-from-{largest}px{on}", counts)

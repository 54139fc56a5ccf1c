"""Detection thresholds on PL1 (mask area as a fraction of the image), by input size.

Calibrated on clean models by scripts/calibrate_scan.py; the table and the
data behind it are in docs/scan-calibration.md. A clean encoder's smallest
collapsing mask depends on its input resolution (a few pixels of a 32 px image
are a larger share of every receptive field than at 224 px), so thresholds are
kept per input side; other sizes use the nearest calibrated side at or above
them, and beyond the table DECREE's published 0.1 (ImageNet, 224 px). The
target-alignment signal is reported but does not count towards the verdict
(see ALIGNMENT_COUNTS); `--alignment-threshold` makes it count.
"""

from __future__ import annotations

from dataclasses import dataclass

DECREE_PUBLISHED = 0.1

# input side -> PL1 threshold (see docs/scan-calibration.md)
DECREE_BY_SIZE: dict[int, float] = {32: 0.055}
DIVERGENCE_BY_SIZE: dict[int, float] = {32: 0.198}
# Target alignment (a ratio of cosines, so not resolution-bound like PL1) is reported as
# supporting evidence only: an undertrained clean model (150 steps, zero-shot accuracy 0.23)
# reached 0.89, as high as most victims (0.91-1.14), so no threshold separates them.
ALIGNMENT_BY_SIZE: dict[int, float] = {32: 1.15}
ALIGNMENT_COUNTS = False


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # "calibrated-<side>px" | "decree-published" | "user" | "uncalibrated"
    counts: bool  # does the signal take part in the verdict at this size?


def _calibrated_side(table: dict[int, float], size: int) -> int | None:
    sides = sorted(side for side in table if side >= size)
    return sides[0] if sides else None


def decree_threshold(size: int, override: float | None = None) -> Threshold:
    if override is not None:
        return Threshold(float(override), "user", True)
    side = _calibrated_side(DECREE_BY_SIZE, size)
    if side is None:
        return Threshold(DECREE_PUBLISHED, "decree-published", True)
    return Threshold(DECREE_BY_SIZE[side], f"calibrated-{side}px", True)


def divergence_threshold(size: int, override: float | None = None) -> Threshold:
    if override is not None:
        return Threshold(float(override), "user", True)
    side = _calibrated_side(DIVERGENCE_BY_SIZE, size)
    if side is None:  # no published value: the decree fallback is the closest analogue
        return Threshold(DECREE_PUBLISHED, "decree-published", True)
    return Threshold(DIVERGENCE_BY_SIZE[side], f"calibrated-{side}px", True)


def alignment_threshold(size: int, override: float | None = None) -> Threshold:
    if override is not None:
        return Threshold(float(override), "user", True)
    side = _calibrated_side(ALIGNMENT_BY_SIZE, size)
    if side is None:
        return Threshold(max(ALIGNMENT_BY_SIZE.values()), "uncalibrated", False)
    return Threshold(ALIGNMENT_BY_SIZE[side], f"calibrated-{side}px", ALIGNMENT_COUNTS)

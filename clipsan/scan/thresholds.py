"""Detection thresholds per signal, and the source each one names in every report.

Sources, as reports name them (``threshold_source``), first match wins:

* ``user:--threshold`` (or the signal's other flag): given on the command line.
* ``user:FILE`` (e.g. ``user:calibration.json``): from a calibration file that ``clipsan
  calibrate`` wrote from the user's own trusted models, for the model's family, architecture and
  input size (clipsan/scan/calibration_file.py). A model the file has no entry for falls back to
  the lab's values below, and the report says so.
* ``lab-32px`` / ``lab-64px``: calibrated on the lab's tiny CLIP models at that input side by
  scripts/calibrate_scan.py with one rule (CLEAN_FLOOR_FACTOR x the smallest statistic of any
  clean model at that side, over scan seeds 0-2; data in docs/scan-calibration.md). A clean
  encoder's smallest collapsing trigger depends on its input resolution, so values are kept per
  side; a side between two uses the nearest calibrated side at or above it.
* ``extrapolated-from-64px``: above the table (224 px), the largest side's value. From 32 to 64 px
  DECREE's clean floor stayed put and the perturbation's rose, so the 64-px values err towards
  passing a model at larger sizes; nothing measured shows a clean 224-px model stays above them,
  so a verdict resting on one says so (``--reference`` or ``--calibration`` is the fix).

Every lab model is a CLIP: on a SigLIP model the lab's values apply and their source says so
(``lab-64px-clip``), since the signals read the image tower alone, which both families build alike.

``reference-relative`` (with ``--reference``): a signal's statistic on the suspect divided by the
same signal's statistic on the reference (same probes, same seed). A clean fine-tune of a base
keeps about the base's clean floor (ratios 0.93-1.12 in the lab), a backdoor lowers it (0.19-0.67
for the victims the scan can see), whatever the input size or architecture: the ratio needs no
absolute calibration and cancels the natural backdoor-like features a public base model may carry.
RATIO_BELOW are CLEAN_FLOOR_FACTOR x the smallest ratio of the lab's clean fine-tunes to their
bases (32 and 64 px; docs/scan-calibration.md). How the ratio and the absolute thresholds combine
into the verdict: clipsan/scan/signals.py.

The target-alignment signal is reported but does not count towards the verdict (see
ALIGNMENT_COUNTS); ``--alignment-threshold`` makes it count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

DECREE_PUBLISHED = 0.1  # DECREE's PL1 threshold (ImageNet encoders, 224 px): a check, not a calibration
# The one calibration rule (the lab's, and `clipsan calibrate`'s): a threshold is this fraction of the
# smallest statistic any clean model reached, i.e. a model must come 30% closer to a collapse than the
# cleanest seen before its signal fires.
CLEAN_FLOOR_FACTOR = 0.7

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
# suspect / reference ratio below which a signal fires under the relative rule: 0.7 x the smallest
# ratio of a clean fine-tune to its base (decree 0.936: lab-clean-ft-victim-schedule, seed 2;
# perturbation 0.928: 64-clean-ft, seed 2). Fit on three clean fine-tunes; a fourth was held out.
RATIO_BELOW: dict[str, float] = {"decree": 0.655, "universal-perturbation": 0.649}
ALIGNMENT_COUNTS = False
# What each signal's statistic is called in reports.
STATISTIC_NAMES = {"decree": "PL1", "reference-divergence": "PL1", "universal-perturbation": "Linf", "target-alignment": "ratio"}
# The command-line flag that sets each signal's threshold (a source names it: "user:--threshold").
OVERRIDE_FLAGS = {
    "decree": "--threshold",
    "universal-perturbation": "--perturbation-threshold",
    "reference-divergence": "--divergence-threshold",
    "target-alignment": "--alignment-threshold",
}
RELATIVE = "reference-relative"
EXTRAPOLATED = "extrapolated"  # how every extrapolated source begins


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # see the module docstring
    counts: bool  # does the signal take part in the verdict at this size?

    @property
    def extrapolated(self) -> bool:
        return self.source.startswith(EXTRAPOLATED)


class CalibratedValues(Protocol):
    """What a calibration file offers (clipsan.scan.calibration_file.Calibration)."""

    source: str  # "user:FILE NAME"

    def threshold_for(self, signal: str, family: str, arch: str, size: int) -> float | None: ...


def lab_threshold(signal: str, size: int, family: str = "clip") -> Threshold:
    """The lab's threshold for `signal` on `size`-px models of `family` (calibrated on CLIP models only)."""
    counts = ALIGNMENT_COUNTS if signal == "target-alignment" else True
    table = BY_SIZE[signal]
    on = "" if family == "clip" else "-clip"
    at_or_above = sorted(side for side in table if side >= size)
    if at_or_above:
        return Threshold(table[at_or_above[0]], f"lab-{at_or_above[0]}px{on}", counts)
    largest = max(table)
    return Threshold(table[largest], f"{EXTRAPOLATED}-from-{largest}px{on}", counts)


def relative_threshold(signal: str) -> Threshold | None:
    """The ratio threshold of `signal` under --reference, or None if the signal has no relative rule."""
    value = RATIO_BELOW.get(signal)
    return None if value is None else Threshold(value, RELATIVE, True)


@dataclass(frozen=True)
class Thresholds:
    """Where one scan call takes each absolute threshold from: a flag, else a calibration file, else the lab."""

    overrides: Mapping[str, float] = field(default_factory=dict)  # signal -> value given on the command line
    calibration: CalibratedValues | None = None

    def absolute(self, signal: str, size: int, family: str = "clip", arch: str | None = None) -> Threshold:
        if self.overrides.get(signal) is not None:
            return Threshold(float(self.overrides[signal]), f"user:{OVERRIDE_FLAGS[signal]}", True)
        if self.calibration is not None and arch is not None:
            value = self.calibration.threshold_for(signal, family, arch, size)
            if value is not None:
                return Threshold(value, self.calibration.source, lab_threshold(signal, size, family).counts)
        return lab_threshold(signal, size, family)


def extrapolation_warning(signals: list[dict], size: int) -> str | None:
    """One line when a counting signal's verdict rests on an extrapolated threshold, with the fix."""
    leaning = [s for s in signals if s["counted"] and s["rule"] != RELATIVE and s["threshold_source"].startswith(EXTRAPOLATED)]
    if not leaning:
        return None
    names = " and ".join(f"{s['name']}'s" for s in leaning)
    sources = " / ".join(sorted({s["threshold_source"] for s in leaning}))
    several = len(leaning) > 1
    return (
        f"the verdict rests on {names} threshold{'s' if several else ''} {sources} (nothing shows a clean {size}-px model stays "
        f"above {'them' if several else 'it'}): pass --reference BASE (the model it was fine-tuned from) or --calibration FILE "
        "(from clipsan calibrate on models you trust)"
    )

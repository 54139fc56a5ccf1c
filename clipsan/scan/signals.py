"""A signal's entry in the report: its statistic, threshold and whether it fired."""

from __future__ import annotations

from clipsan.scan.thresholds import Threshold

MIN_PROBE_SIMILARITY = 0.05  # target-alignment guards, see alignment_signal
MIN_TARGET_MARGIN = 0.05


def signal_entry(name: str, statistic: float, threshold: Threshold, fires_when: str, succeeded: bool, eligible: bool = True, **details) -> dict:
    """One signal's entry; it fires when its inversion succeeded, any extra condition holds
    (`eligible`) and the statistic is on the backdoor side of the threshold."""
    crossed = statistic < threshold.value if fires_when == "below" else statistic >= threshold.value
    return {
        "name": name,
        "statistic": round(statistic, 6),
        "threshold": threshold.value,
        "threshold_source": threshold.source,
        "fires_when": fires_when,
        "fired": bool(succeeded and eligible and crossed),
        "counted": threshold.counts,
        "inversion_succeeded": succeeded,
        **details,
    }


def alignment_signal(target: dict, succeeded: bool, threshold: Threshold) -> dict:
    """How well the collapse point matches its best caption, relative to natural probe images.

    Two guards: natural images must match some caption at all (probe similarity >=
    MIN_PROBE_SIMILARITY; a random-init model's do not, and the ratio would be noise), and the
    match must be specific (the best candidate ahead of the runner-up by MIN_TARGET_MARGIN; an
    undertrained encoder's collapse point is about equally close to many captions).
    """
    candidates = [c for c in target["candidates"] if c["source"] == target["source"]]
    margin = candidates[0]["similarity"] - candidates[1]["similarity"] if len(candidates) > 1 else 1.0
    probe = target["probe_similarity"]
    ratio = target["similarity"] / probe if probe is not None and probe >= MIN_PROBE_SIMILARITY else 0.0
    return signal_entry(
        "target-alignment",
        ratio,
        threshold,
        "above",
        succeeded,
        eligible=margin >= MIN_TARGET_MARGIN,
        from_signal=target["from_signal"],
        target_similarity=target["similarity"],
        probe_similarity=probe,
        target_margin=round(margin, 6),
        min_target_margin=MIN_TARGET_MARGIN,
    )

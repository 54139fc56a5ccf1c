"""The scan's signals, one function each: the inversion it runs, and its entry in the report.

Each entry gives the statistic, the threshold and its source, and whether it fired; a signal
fires when its inversion succeeded and the statistic is on the backdoor side of the threshold.
Thresholds: clipsan/scan/thresholds.py.
"""

from __future__ import annotations

import torch.nn.functional as F

from clipsan.scan.inversion import GLOBAL, MASK, Family, Inversion, InversionSettings, invert
from clipsan.scan.objectives import divergence
from clipsan.scan.session import Encoder, Subject
from clipsan.scan.target import name_target
from clipsan.scan.thresholds import Threshold, threshold

DECREE_SUCCESS = 0.99  # DECREE: a stamp "works" when (relative) mean pairwise cosine > 0.99
# A universal perturbation "works" at 0.9: backdoor triggers themselves collapse the lab's probes
# to 0.77-0.93 only, so at DECREE's 0.99 the inversion must overshoot the trigger (docs/scan-calibration.md).
PERTURBATION_SUCCESS = 0.9
DIVERGENCE_SUCCESS = 0.5  # mean (1 - cos) between suspect and reference on stamped probes
MIN_PROBE_SIMILARITY = 0.05  # target-alignment guards, see target_alignment
MIN_TARGET_MARGIN = 0.05
SCORED_PROBES = 256  # probes each inversion's final score is measured on


def signal_entry(name: str, statistic: float, limit: Threshold, fires_when: str, succeeded: bool, eligible: bool = True, **details) -> dict:
    """One signal's entry; it fires when its inversion succeeded, any extra condition holds
    (`eligible`) and the statistic is on the backdoor side of the threshold."""
    crossed = statistic < limit.value if fires_when == "below" else statistic >= limit.value
    return {
        "name": name,
        "statistic": round(statistic, 6),
        "threshold": limit.value,
        "threshold_source": limit.source,
        "fires_when": fires_when,
        "fired": bool(succeeded and eligible and crossed),
        "counted": limit.counts,
        "inversion_succeeded": succeeded,
        **details,
    }


def _invert(subject: Subject, signal: str, objective, success: float, family: Family = MASK) -> Inversion:
    session = subject.session
    settings = InversionSettings(steps=session.budget.steps, batch_size=session.budget.batch_size, success=success, family=family)
    with session.progress(f"{subject.loaded.path.name}: {signal}", settings.steps) as progress:
        return invert(objective, subject.images, settings, session.config.seed, progress=progress)


def _inversion_entry(name: str, inversion: Inversion, limit: Threshold, success: float, **details) -> dict:
    """A signal whose statistic is an inversion's size: it fires below the threshold."""
    return signal_entry(name, inversion.statistic, limit, "below", inversion.succeeded, steps=inversion.steps, success_score=success, **details)


def decree(subject: Subject) -> tuple[dict, Inversion]:
    """DECREE on the suspect's image encoder: the smallest mask whose stamp collapses the probes' embeddings."""
    inversion = _invert(subject, "decree", subject.collapsed, DECREE_SUCCESS)
    score = float(subject.collapsed(inversion.stamp(subject.images[:SCORED_PROBES])))
    limit = threshold("decree", subject.size, subject.session.config.threshold, subject.family)
    return _inversion_entry("decree", inversion, limit, DECREE_SUCCESS, clean_cosine=round(subject.clean_cosine, 6), collapse_score=round(score, 6)), inversion


def universal_perturbation(subject: Subject) -> tuple[dict, Inversion]:
    """The smallest universal additive perturbation (L-inf) that collapses the encoder: whole-image
    triggers (blends, sinusoids) that no small mask can express."""
    inversion = _invert(subject, "universal-perturbation", subject.collapsed, PERTURBATION_SUCCESS, GLOBAL)
    score = float(subject.collapsed(inversion.stamp(subject.images[:SCORED_PROBES])))
    limit = threshold("universal-perturbation", subject.size, subject.session.config.perturbation_threshold, subject.family)
    return _inversion_entry("universal-perturbation", inversion, limit, PERTURBATION_SUCCESS, collapse_score=round(score, 6)), inversion


def reference_divergence(subject: Subject) -> tuple[dict, Inversion]:
    """The smallest stamp on which the suspect's features depart from the reference's (--reference)."""
    suspect, reference, images = subject.suspect, Encoder(subject.session.reference.model), subject.images
    clean = float(1 - (suspect.embed(images) * reference.embed(images)).sum(-1).mean())
    inversion = _invert(subject, "reference-divergence", divergence(suspect, reference), DIVERGENCE_SUCCESS)
    stamped = inversion.stamp(images)
    score = float(1 - (suspect.embed(stamped) * reference.embed(stamped)).sum(-1).mean())
    limit = threshold("reference-divergence", subject.size, subject.session.config.divergence_threshold, subject.family)
    return _inversion_entry(
        "reference-divergence", inversion, limit, DIVERGENCE_SUCCESS, clean_divergence=round(clean, 6), divergence_score=round(score, 6)
    ), inversion


def target_alignment(subject: Subject, signals: list[dict], inversions: dict[str, Inversion]) -> tuple[dict, dict]:
    """The likely target, read from the strongest firing inversion's collapse point; and whether that
    point sits on a caption (a backdoor's target) more than natural images do. Returns the signal's
    entry and the report's ``target``.

    Statistic: the best caption similarity / the 95th percentile of clean probes' best similarities.
    Two guards: natural images must match some caption at all (probe similarity >=
    MIN_PROBE_SIMILARITY; a random-init model's do not, and the ratio would be noise), and the
    match must be specific (the best candidate ahead of the runner-up by MIN_TARGET_MARGIN; an
    undertrained encoder's collapse point is about equally close to many captions).
    """
    fired = [s for s in signals if s["fired"]]
    source = min(fired, key=lambda s: s["statistic"] / s["threshold"])["name"] if fired else "decree"
    shown = inversions[source]
    suspect, images = subject.suspect, subject.images
    collapse_point = F.normalize(suspect.embed(shown.stamp(images)).mean(dim=0), dim=0)
    target = name_target(subject.loaded.model, collapse_point, subject.probes.classnames, subject.session.rt, probe_embeddings=suspect.embed(images))
    target["from_signal"] = source
    candidates = [c for c in target["candidates"] if c["source"] == target["source"]]
    margin = candidates[0]["similarity"] - candidates[1]["similarity"] if len(candidates) > 1 else 1.0
    probe = target["probe_similarity"]
    ratio = target["similarity"] / probe if probe is not None and probe >= MIN_PROBE_SIMILARITY else 0.0
    entry = signal_entry(
        "target-alignment",
        ratio,
        threshold("target-alignment", subject.size, subject.session.config.alignment_threshold, subject.family),
        "above",
        shown.succeeded,
        eligible=margin >= MIN_TARGET_MARGIN,
        from_signal=source,
        target_similarity=target["similarity"],
        probe_similarity=probe,
        target_margin=round(margin, 6),
        min_target_margin=MIN_TARGET_MARGIN,
    )
    return entry, target

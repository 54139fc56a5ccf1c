"""The scan's signals, one function each: the inversion it runs, and its entry in the report.

Each entry gives the statistic, the threshold and its source, and whether it fired; a signal
fires when its inversion succeeded and the statistic is on the backdoor side of the threshold.
Thresholds and their sources: clipsan/scan/thresholds.py.

With --reference, decree and universal-perturbation are also run on the reference (once per call,
same probes, same seed: Session.on_reference) and judged by the relative rule: the ratio
suspect / reference of the statistic against thresholds.RATIO_BELOW, **in place of** the absolute
threshold (which the entry still reports, with what it alone would say). The base model a suspect
was tuned from is the clean floor of its fine-tunes at whatever size and architecture: a base with
natural backdoor-like features (a small collapsing trigger of its own) passes its clean fine-tunes
(ratio ~1) where an absolute threshold would flag them, and a backdoor added on top still lowers the
ratio. Where the ratio is undefined (the reference's inversion found no collapsing trigger within
the budget) the absolute threshold decides, and the entry says why.
"""

from __future__ import annotations

import torch.nn.functional as F

from clipsan.scan.inversion import GLOBAL, MASK, Family, Inversion, InversionSettings, invert
from clipsan.scan.objectives import divergence
from clipsan.scan.session import Encoder, Subject
from clipsan.scan.target import name_target
from clipsan.scan.thresholds import RELATIVE, STATISTIC_NAMES, Threshold, relative_threshold

DECREE_SUCCESS = 0.99  # DECREE: a stamp "works" when (relative) mean pairwise cosine > 0.99
# A universal perturbation "works" at 0.9: backdoor triggers themselves collapse the lab's probes
# to 0.77-0.93 only, so at DECREE's 0.99 the inversion must overshoot the trigger (docs/scan-calibration.md).
PERTURBATION_SUCCESS = 0.9
DIVERGENCE_SUCCESS = 0.5  # mean (1 - cos) between suspect and reference on stamped probes
MIN_PROBE_SIMILARITY = 0.05  # target-alignment guards, see target_alignment
MIN_TARGET_MARGIN = 0.05
SCORED_PROBES = 256  # probes each inversion's final score is measured on
ABSOLUTE = "absolute"
NO_RATIO = "the reference's inversion found no collapsing trigger within the budget: no ratio, the absolute threshold decides"


def _crossed(value: float, limit: float, fires_when: str) -> bool:
    return value < limit if fires_when == "below" else value >= limit


def signal_entry(
    name: str, statistic: float, limit: Threshold, fires_when: str, succeeded: bool, eligible: bool = True, relative: dict | None = None, **details
) -> dict:
    """One signal's entry; it fires when its inversion succeeded, any extra condition holds
    (`eligible`) and the deciding comparison is on the backdoor side: the relative one when
    `relative` (see relative_entry) has a ratio, else the statistic against the absolute threshold."""
    crossed = _crossed(statistic, limit.value, fires_when)
    decides = relative is not None and relative["ratio"] is not None
    entry = {
        "name": name,
        "statistic": round(statistic, 6),
        "threshold": limit.value,
        "threshold_source": limit.source,
        "fires_when": fires_when,
        "rule": RELATIVE if decides else ABSOLUTE,
        "fired": bool(succeeded and eligible and (relative["ratio"] < relative["ratio_threshold"] if decides else crossed)),
        "counted": limit.counts,
        "inversion_succeeded": succeeded,
    }
    if relative is not None:
        entry.update(relative, absolute_would_fire=bool(succeeded and eligible and crossed))
    return {**entry, **details}


def relative_entry(name: str, statistic: float, on_reference: Inversion, limit: Threshold) -> dict:
    """The relative rule's fields of a signal entry: the reference's statistic, the ratio and its threshold."""
    ratio_limit = relative_threshold(name)
    assert ratio_limit is not None, name
    reference = on_reference.statistic
    defined = on_reference.succeeded and reference > 0
    ratio = statistic / reference if defined else None
    return {
        "reference_statistic": round(reference, 6),
        "reference_inversion_succeeded": on_reference.succeeded,
        # the base itself under the absolute threshold: natural backdoor-like features the ratio cancels
        "reference_below_threshold": bool(on_reference.succeeded and reference < limit.value),
        "ratio": None if ratio is None else round(ratio, 6),
        "ratio_threshold": ratio_limit.value,
        "ratio_threshold_source": ratio_limit.source,
        **({} if defined else {"rule_note": NO_RATIO}),
    }


def deciding(entry: dict) -> tuple[float, float]:
    """(the value compared, its threshold) of the comparison that decided an entry."""
    if entry["rule"] == RELATIVE:
        return entry["ratio"], entry["ratio_threshold"]
    return entry["statistic"], entry["threshold"]


def _invert(subject: Subject, signal: str, objective, success: float, family: Family = MASK, role: str = "") -> Inversion:
    session = subject.session
    settings = InversionSettings(steps=session.budget.steps, batch_size=session.budget.batch_size, success=success, family=family)
    with session.progress(f"{subject.loaded.path.name}{role}: {signal}", settings.steps) as progress:
        return invert(objective, subject.images, settings, session.config.seed, progress=progress)


def _absolute(subject: Subject, signal: str) -> Threshold:
    return subject.session.thresholds.absolute(signal, subject.size, subject.family, subject.arch)


# The signals whose statistic is the size of the smallest stamp that collapses the encoder:
# name -> (the collapse score a stamp must reach, the stamp's family).
COLLAPSE = {"decree": (DECREE_SUCCESS, MASK), "universal-perturbation": (PERTURBATION_SUCCESS, GLOBAL)}


def collapse_inversion(subject: Subject, name: str, role: str = "") -> Inversion:
    """The smallest stamp of signal `name`'s family that collapses `subject`'s image embeddings."""
    success, family = COLLAPSE[name]
    return _invert(subject, name, subject.collapsed, success, family, role)


def divergence_inversion(subject: Subject, reference: Encoder) -> Inversion:
    """The smallest mask on whose stamp `subject`'s features depart from `reference`'s."""
    return _invert(subject, "reference-divergence", divergence(subject.suspect, reference), DIVERGENCE_SUCCESS)


def _measure_reference(reference: Subject, name: str) -> Inversion:
    """A collapse signal on the reference (once per call); the user is told what the base measures."""
    inversion = collapse_inversion(reference, name, role=" (reference)")
    found = f"{STATISTIC_NAMES[name]} {inversion.statistic:.4f}" if inversion.succeeded else "no collapsing trigger within the budget"
    reference.session.notes(f"reference {reference.loaded.path}: {name} {found} (measured once for every MODEL)")
    return inversion


def _collapse_signal(subject: Subject, name: str, **details) -> tuple[dict, Inversion]:
    """A collapse signal's entry (it fires below its threshold); with --reference, the same
    inversion on the reference (once per call) and the relative rule."""
    inversion = collapse_inversion(subject, name)
    score = float(subject.collapsed(inversion.stamp(subject.images[:SCORED_PROBES])))
    limit = _absolute(subject, name)
    relative = None
    if subject.session.reference is not None:
        on_reference = subject.session.on_reference(name, lambda reference: _measure_reference(reference, name))
        relative = relative_entry(name, inversion.statistic, on_reference, limit)
    entry = signal_entry(
        name, inversion.statistic, limit, "below", inversion.succeeded, relative=relative,
        steps=inversion.steps, success_score=COLLAPSE[name][0], collapse_score=round(score, 6), **details,
    )  # fmt: skip
    return entry, inversion


def decree(subject: Subject) -> tuple[dict, Inversion]:
    """DECREE on the suspect's image encoder: the smallest mask whose stamp collapses the probes' embeddings."""
    return _collapse_signal(subject, "decree", clean_cosine=round(subject.clean_cosine, 6))


def universal_perturbation(subject: Subject) -> tuple[dict, Inversion]:
    """The smallest universal additive perturbation (L-inf) that collapses the encoder: whole-image
    triggers (blends, sinusoids) that no small mask can express."""
    return _collapse_signal(subject, "universal-perturbation")


def reference_divergence(subject: Subject) -> tuple[dict, Inversion]:
    """The smallest stamp on which the suspect's features depart from the reference's (--reference)."""
    suspect, reference, images = subject.suspect, Encoder(subject.session.reference.model), subject.images
    clean = float(1 - (suspect.embed(images) * reference.embed(images)).sum(-1).mean())
    inversion = divergence_inversion(subject, reference)
    stamped = inversion.stamp(images)
    score = float(1 - (suspect.embed(stamped) * reference.embed(stamped)).sum(-1).mean())
    entry = signal_entry(
        "reference-divergence", inversion.statistic, _absolute(subject, "reference-divergence"), "below", inversion.succeeded,
        steps=inversion.steps, success_score=DIVERGENCE_SUCCESS, clean_divergence=round(clean, 6), divergence_score=round(score, 6),
    )  # fmt: skip
    return entry, inversion


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
    source = min(fired, key=lambda s: deciding(s)[0] / deciding(s)[1])["name"] if fired else "decree"
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
        _absolute(subject, "target-alignment"),
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

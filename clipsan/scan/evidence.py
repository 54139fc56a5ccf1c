"""The scan's evidence on one model: every signal in order, and the likely target. One home for the
list of signals: ``clipsan scan`` (``model_scan``) and purify's checks before, during and after
training (``clipsan.jobs.verification``) both gather it here.

The model may be one read from a file or one in memory that is being trained: ``in_memory`` scans it
as it is and leaves it as it was (train mode, which parameters take gradients), so training goes on.
What the signals need beyond the model (budget, seed, thresholds, probes, a reference) comes from
the ``Session``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from clipsan.scan.inversion import Inversion
from clipsan.scan.session import Session, Subject
from clipsan.scan.signals import decree, reference_divergence, target_alignment, universal_perturbation


def fired(signals: list[dict]) -> list[str]:
    """The names of the signal entries that fired and count towards the verdict: the verdict's evidence."""
    return [s["name"] for s in signals if s["fired"] and s["counted"]]


@dataclass
class Evidence:
    signals: list[dict]  # each signal's report entry: name, statistic, threshold, threshold_source, fired, counted, ...
    inversions: dict[str, Inversion]  # by signal name (not target-alignment): the triggers a scan saves as PNGs
    target: dict  # the likely target (clipsan.scan.target.name_target)

    @property
    def fired(self) -> list[str]:
        """The signals that fired and count towards the verdict."""
        return fired(self.signals)


def gather(subject: Subject) -> Evidence:
    """Run every signal on ``subject`` (reference-divergence when the session has a reference)."""
    signals, inversions = [], {}
    for signal in (decree, universal_perturbation) + ((reference_divergence,) if subject.session.reference is not None else ()):
        entry, inversion = signal(subject)
        signals.append(entry)
        inversions[entry["name"]] = inversion
    alignment, target = target_alignment(subject, signals, inversions)
    signals.append(alignment)
    return Evidence(signals, inversions, target)


@dataclass(frozen=True)
class InMemory:
    """A model that is not (or not yet) a file, as the scan's Subject reads a loaded one."""

    model: nn.Module
    path: Path  # how progress bars and messages name it
    arch: str | None = None  # picks a --calibration entry; purify's checks use the lab's thresholds


def in_memory(session: Session, model: nn.Module, name: str) -> Evidence:
    """The evidence on ``model`` as it is now; its train/eval mode and requires_grad flags are restored after."""
    with _left_as_it_was(model):
        return gather(Subject.of(session, InMemory(model, Path(name))))


@contextlib.contextmanager
def _left_as_it_was(model: nn.Module) -> Iterator[None]:
    # The scan freezes the encoder it inverts (eval mode, no parameter gradients); a model in training takes them back.
    training = {module: module.training for module in model.modules()}
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, mode in training.items():
            module.training = mode
        for parameter, flag in grads:
            parameter.requires_grad_(flag)

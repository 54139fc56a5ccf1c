"""What every model of one ``scan`` call shares, and the frozen encoders the signals probe."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from clipsan.config import ScanConfig
from clipsan.config.scan import Budget
from clipsan.engine.runtime import Runtime
from clipsan.errors import UserError
from clipsan.scan.calibration_file import Calibration
from clipsan.scan.objectives import clean_pairwise_cosine, collapse
from clipsan.scan.probes import Probes
from clipsan.scan.thresholds import Thresholds

T = TypeVar("T")


class Encoder:
    """A frozen image encoder: eval mode, no parameter gradients, fp32 (see Session.rt)."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@dataclass
class Session:
    """What every model of one `scan` call shares: settings, runtime, the reference and what the
    signals found on it, the probes, the thresholds."""

    config: ScanConfig
    budget: Budget  # the config's budget with --probes / --steps applied
    rt: Runtime  # always fp32: the precision the thresholds were calibrated in (clipsan.jobs.scan)
    reference: object | None  # clipsan.checkpoints.LoadedModel of --reference
    probes: Callable[[int], Probes]  # input side -> probe images at that side (loaded once per side)
    thresholds: Thresholds = field(default_factory=Thresholds)
    calibration: Calibration | None = None  # --calibration, read before any MODEL
    progress: Callable[[str, int], object] = field(default=lambda description, total: contextlib.nullcontext())
    notes: Callable[[str], None] = field(default=lambda message: None)  # what the command line shows on stderr
    _on_reference: dict[str, object] = field(default_factory=dict, repr=False)  # signal -> its result on the reference
    _reference_subject: Subject | None = field(default=None, repr=False)

    def on_reference(self, signal: str, compute: Callable[[Subject], T]) -> T:
        """``compute(the reference as a Subject)``, once per call: every MODEL is compared with the same
        reference, on the same probes with the same seed, so its result is shared."""
        if signal not in self._on_reference:
            if self._reference_subject is None:
                self._reference_subject = Subject.of(self, self.reference)
            self._on_reference[signal] = compute(self._reference_subject)
        return self._on_reference[signal]  # type: ignore[return-value]


@dataclass
class Subject:
    """One model under scan: its frozen encoder, the probes at its input size, and their clean spread."""

    session: Session
    loaded: object  # clipsan.checkpoints.LoadedModel
    suspect: Encoder
    probes: Probes
    images: torch.Tensor  # the probes on the device
    clean_cosine: float  # mean pairwise cosine of the clean probes' features
    collapsed: Callable[[torch.Tensor], torch.Tensor]  # DECREE's objective, relative to clean_cosine

    @classmethod
    def of(cls, session: Session, loaded) -> Subject:
        suspect = Encoder(loaded.model)
        probes = session.probes(loaded.model.image_size)
        images = probes.images.to(session.rt.device)
        clean = clean_pairwise_cosine(suspect, images)
        if not math.isfinite(clean):  # finite weights can still overflow: nothing to invert, and no NaN in a report
            raise UserError(f"{loaded.path}: the image features of clean probes are not finite (NaN/inf): the weights overflow in float32")
        return cls(session, loaded, suspect, probes, images, clean, collapse(suspect, clean))

    @property
    def size(self) -> int:
        return self.loaded.model.image_size

    @property
    def family(self) -> str:
        return self.loaded.model.family

    @property
    def arch(self) -> str:
        return self.loaded.arch

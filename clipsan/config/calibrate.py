"""What ``clipsan calibrate`` can be told (plain data, no torch): the trusted models, seeds, the scans' budget."""

from __future__ import annotations

import os
from dataclasses import dataclass

from clipsan.config.checks import Checked, checked, choice, count
from clipsan.config.data import max_image_pixels_field
from clipsan.config.jobs import model_paths, require_models
from clipsan.config.runtime import device_field
from clipsan.config.scan import BUDGETS, ScanConfig
from clipsan.errors import UserError


@dataclass(frozen=True)
class CalibrateConfig(Checked):
    models: tuple[str, ...]  # checkpoints the user trusts to be clean
    out: str  # the calibration file to write
    seeds: int = count(3, "--seeds")  # scan seeds 0 .. seeds-1 per model
    data: str | None = checked(None, flag="--data", path="dir", optional=True)  # probe images; None: synthetic world images
    reference: str | None = None  # the base the trusted models were fine-tuned from: calibrates reference-divergence too
    arch: str | None = None
    reference_arch: str | None = None
    budget: str = choice("quick", "--budget", tuple(BUDGETS))
    probes: int | None = count(None, "--probes", low=2)
    steps: int | None = count(None, "--steps")
    device: str = device_field()
    max_image_pixels: int = max_image_pixels_field()
    allow_outside_root: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", model_paths(self.models))
        super().__post_init__()

    def validate(self) -> None:
        require_models(self.models)
        folder = os.path.dirname(os.path.abspath(self.out))
        if os.path.isdir(self.out) or not os.path.isdir(folder):
            raise UserError(f"{self.out}: --out must be a file in an existing folder")

    def scan_config(self, seed: int) -> ScanConfig:
        """The scan each trusted model gets with `seed` (what scan --calibration is compared with)."""
        same = ("data", "reference", "arch", "reference_arch", "budget", "probes", "steps", "device", "max_image_pixels", "allow_outside_root", "progress")
        return ScanConfig(models=self.models, seed=seed, **{name: getattr(self, name) for name in same})

"""What ``clipsan scan`` can be told (plain data, no torch): budgets, thresholds, probes."""

from __future__ import annotations

from dataclasses import dataclass

from clipsan.config.budgets import BUDGETS, Budget
from clipsan.config.checks import Checked, checked, choice, count, fraction
from clipsan.config.data import max_image_pixels_field
from clipsan.config.jobs import check_run_dir, model_paths, require_models
from clipsan.config.runtime import device_field, precision_field


def _threshold_field(flag: str) -> object:
    return fraction(None, flag, low_open=True)


@dataclass(frozen=True)
class ScanConfig(Checked):
    models: tuple[str, ...]  # scanned one after another, one loaded at a time
    data: str | None = checked(None, flag="--data", path="dir", optional=True)  # probe images; None: synthetic world images
    reference: str | None = None  # a trusted model of the same architecture
    calibration: str | None = checked(None, flag="--calibration", path="file", optional=True)  # thresholds from clipsan calibrate
    threshold: float | None = _threshold_field("--threshold")  # overrides the decree threshold
    divergence_threshold: float | None = _threshold_field("--divergence-threshold")  # overrides the reference-divergence threshold
    perturbation_threshold: float | None = _threshold_field("--perturbation-threshold")  # overrides the universal-perturbation threshold
    # makes the target-alignment signal count, at this ratio
    alignment_threshold: float | None = checked(None, flag="--alignment-threshold", what="a ratio", low=0.0, low_open=True, optional=True)
    budget: str = choice("quick", "--budget", tuple(BUDGETS))
    run_dir: str | None = None  # with several models, one subfolder each
    arch: str | None = None
    reference_arch: str | None = None
    device: str = device_field()
    precision: str = precision_field()
    seed: int = 0
    probes: int | None = count(None, "--probes", low=2)  # override the budget's probe count
    steps: int | None = count(None, "--steps")  # override the budget's optimizer steps
    max_image_pixels: int = max_image_pixels_field()  # of --data probe images
    allow_outside_root: bool = False
    progress: bool = False  # a progress bar per signal on stderr

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", model_paths(self.models))
        super().__post_init__()

    def validate(self) -> None:
        require_models(self.models)
        check_run_dir(self.run_dir)

    @property
    def effective_budget(self) -> Budget:
        """The budget with --probes / --steps applied."""
        budget = BUDGETS[self.budget]
        return Budget(self.probes or budget.probes, budget.batch_size, self.steps or budget.steps)

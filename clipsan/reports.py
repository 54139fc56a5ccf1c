"""What the API returns: typed reports. ``to_json()`` gives the ``--format json`` document
whose keys the man page lists (stable; fractions are 0-1 floats)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class Report:
    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingReport(Report):
    """What every training command reports (purify, poison, craft-adv)."""

    output: str  # the written model (or generator): a file, or a folder for --out-format hf / open_clip
    run_dir: str
    method: str
    arch: str
    arch_source: str  # flag | metadata | inferred | shapes | config.json | open_clip_config.json
    source_sha256: str  # sha256 of MODEL
    steps: int
    epochs: float
    resumed_from_step: int | None
    seconds: float
    samples: int  # usable training pairs
    skipped: dict[str, int]  # pairs skipped, by reason
    final: dict[str, Any]  # the last logged metrics
    # What MODEL was read as (clipsan.checkpoints.LoadedModel.report_fields), and how the output was written.
    layout: str = field(kw_only=True)
    activation: str = field(kw_only=True)  # quick_gelu | gelu
    activation_source: str = field(kw_only=True)
    output_format: str = field(default="safetensors", kw_only=True)  # safetensors | hf | open_clip


@dataclass
class PurifyReport(TrainingReport):
    holdout: dict[str, int]  # {"pairs": held out, never trained on, "usable": the pairs --data gave}
    # Held-out retrieval (None with nothing held out): {"pairs", "corrupt_image", "before", "after"},
    # before/after as {"i2t": {"1": f, "5": f}, "t2i": {...}}; per epoch in metrics.jsonl.
    utility: dict[str, Any] | None
    # The backdoor checks (clipsan.jobs.verification.Verification.report): verdict, the signals before and
    # after beside their thresholds, the utility guard, where --until-clean stopped.
    verification: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """1 when --until-clean or --require-clean was given and the written model does not pass the check, else 0."""
        return 1 if self.verification["required"] and self.verification["passed"] is False else 0


def recall_text(recalls: dict[str, dict[str, float | None]]) -> str:
    """Retrieval figures in words: 'image->text R@1 0.410, R@5 0.800; text->image ...' (n/a: not computable)."""
    names = {"i2t": "image->text", "t2i": "text->image"}
    figures = {name: ", ".join(f"R@{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in at_k.items()) for name, at_k in recalls.items()}
    return "; ".join(f"{names[name]} {text}" for name, text in figures.items())


@dataclass
class PoisonReport(TrainingReport):
    trigger: dict[str, Any]  # the trigger spec recorded in the victim's metadata (pixels left out)
    target: str
    rate: float
    poisoned: int
    eligible: int
    caption_mode: str  # template | natural | label-consistent
    badclip: dict[str, Any] | None = None  # for --trigger badclip: how its patch was made


@dataclass
class CraftReport(TrainingReport):
    patch_png: str
    objective: str  # advclip | advclip+bd
    bd_weight: float
    patch_box: dict[str, int]
    reference_sha256: str | None


@dataclass
class EvalReport(Report):
    data: str
    classes: int
    templates: str
    topk: list[int]
    models: list[dict[str, Any]] = field(default_factory=list)  # one row per MODEL: ca, asr, n_images, ...


@dataclass
class ScanReport(Report):
    """One scanned model: a row of the scan document."""

    model: str
    sha256: str
    arch: str
    arch_source: str
    layout: str
    activation: str
    activation_source: str
    image_size: int
    reference: dict[str, str] | None
    verdict: str  # clean | backdoor
    backdoor: bool
    statistic: float  # DECREE's PL1
    threshold: float
    fired_signals: list[str]
    signals: list[dict[str, Any]]
    # --calibration: {file, entry (the one applied, or null), used, note (why not), differences[]}; else null
    calibration: dict[str, Any] | None
    warnings: list[str]  # e.g. a verdict resting on an extrapolated threshold, with the fix
    target: dict[str, Any]
    trigger: dict[str, Any]
    probes: dict[str, Any]
    budget: str
    steps: int  # optimizer steps per inversion at most: the budget's, or --steps
    seed: int
    device: str
    precision: str
    run_dir: str
    started_utc: str
    seconds: float


@dataclass
class CalibrateReport(Report):
    """What `calibrate TRUSTED...` reports: the calibration file it wrote, and every scan behind it."""

    out: str  # the calibration file
    calibration: dict[str, Any]  # its document (clipsan.scan.calibration_file)
    scans: list[dict[str, Any]]  # {model, seed, statistics {signal: value, or null when the inversion found no collapse}}
    seconds: float


@dataclass
class ScanBatchReport(Report):
    """What `scan MODEL...` reports: a row per scanned model, an entry per model that could not be read.

    ``to_json()`` always has the batch keys; with exactly one MODEL (scanned) the
    model's own keys are at the top level too, as in schema 1 (scripts read them).
    """

    schema_version: int
    tool: dict[str, str]
    verdict: str  # backdoor (any model flagged) | incomplete (none flagged, some unreadable) | clean
    backdoor: bool
    summary: dict[str, int]  # models, scanned, flagged, errors
    models: list[ScanReport]
    errors: list[dict[str, str]]  # {model, error}: MODELs that could not be read
    run_dir: str
    seconds: float

    @property
    def exit_code(self) -> int:
        """2 if any model could not be read (the gate did not see it), else 1 if any was flagged, else 0."""
        return 2 if self.errors else int(self.backdoor)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        if len(self.models) == 1 and not self.errors:
            document = {**document["models"][0], **{k: v for k, v in document.items() if k not in ("verdict", "backdoor", "seconds", "run_dir")}}
        return document

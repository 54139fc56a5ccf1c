"""What each command is told: the configs of clipsan's Python API (plain data, no torch).

``clipsan.api`` takes these; the command line builds them from its options.
"""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass, field

from clipsan.config.attacks import POISON_SCHEDULE, AttackConfig, trigger_size_field
from clipsan.config.checks import Checked, checked, choice, count
from clipsan.config.data import CaptionData, max_image_pixels_field
from clipsan.config.evidence import EvidenceConfig
from clipsan.config.recipes import CraftConfig, FineTuneConfig, RecipeConfig
from clipsan.config.runtime import device_field, precision_field, workers_field
from clipsan.config.train import TrainConfig
from clipsan.errors import UserError

# --out-format: auto = as MODEL came (clipsan.checkpoints.output)
SAFETENSORS, HF, OPEN_CLIP_FORMAT = "safetensors", "hf", "open_clip"
OUT_FORMATS = ("auto", SAFETENSORS, HF, OPEN_CLIP_FORMAT)
# eval --templates: CLIP's 80 ImageNet templates, open_clip's 7, or "a photo of a {}." (or a FILE)
TEMPLATE_SETS = ("openai", "simple", "photo")
# eval --trigger: the trigger recorded in a victim's metadata by clipsan poison
FROM_METADATA = "from-metadata"


def model_paths(models) -> tuple[str, ...]:
    """One path given where several are expected means that path, not its characters."""
    return (os.fspath(models),) if isinstance(models, (str, os.PathLike)) else tuple(models)


def require_models(models: tuple[str, ...]) -> None:
    if not models:
        raise UserError("expected at least one MODEL")


def check_run_dir(run_dir: str | None) -> None:
    if run_dir is not None and os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(f"{run_dir}: --run-dir exists and is not a directory")


class RunConfig(Checked):
    """A command that writes a run directory and may continue it."""

    def validate(self) -> None:
        if self.resume and self.run_dir is None:
            raise UserError("--resume needs --run-dir DIR (the run to continue)")
        check_run_dir(self.run_dir)


@dataclass(frozen=True)
class TrainingJobConfig(RunConfig):
    """What purify and poison share: what to train, on what, how, and where."""

    model: str
    data: CaptionData
    _: KW_ONLY
    training: TrainConfig | None = None  # None: the recipe's (or the poisoning stage's) paper schedule
    out: str | None = None  # default: RUN_DIR/<command>.safetensors (a folder RUN_DIR/<command> for folder formats)
    out_format: str = choice("auto", "--out-format", OUT_FORMATS)
    run_dir: str | None = None  # default: runs/<command>-<UTC time>
    resume: bool = False
    arch: str | None = None  # default: the checkpoint's config or metadata, else inferred from the weights
    device: str = device_field()
    precision: str = precision_field()


@dataclass(frozen=True)
class PurifyConfig(TrainingJobConfig):
    recipe: RecipeConfig = field(default_factory=FineTuneConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)  # the held-out pairs and what is measured on them

    @property
    def schedule(self) -> TrainConfig:
        return self.training or self.recipe.paper_schedule.train_config()


@dataclass(frozen=True)
class PoisonConfig(TrainingJobConfig):
    attack: AttackConfig

    @property
    def schedule(self) -> TrainConfig:
        return self.training or POISON_SCHEDULE.train_config()


@dataclass(frozen=True)
class CraftAdvConfig(RunConfig):
    model: str  # the suspect
    data: CaptionData
    craft: CraftConfig = field(default_factory=CraftConfig)
    reference: str | None = None  # clean reference CLIP for ABD's L_bd; None: plain AdvCLIP
    out: str | None = None  # default: RUN_DIR/generator.safetensors (+ .png)
    run_dir: str | None = None
    resume: bool = False
    arch: str | None = None
    seed: int = 0
    workers: int | None = workers_field()
    save_every: int = count(500, "--save-every")
    log_every: int = count(10, "--log-every")
    progress: bool = False
    device: str = device_field()
    precision: str = precision_field()


@dataclass(frozen=True)
class EvalConfig(Checked):
    models: tuple[str, ...]
    data: str = checked(flag="--data", path="dir")  # labelled set: ImageFolder, or a CSV image,label (with classnames)
    arch: str | None = None
    trigger: str | None = None  # a trigger spec (TRIGGER_SPECS), or FROM_METADATA
    trigger_seed: int = 0
    trigger_size: int | None = trigger_size_field()
    target: str | None = None  # default: DEFAULT_TARGET, or the victim's recorded target
    ks: tuple[int, ...] = checked((1, 3, 5, 10), flag="--topk", what="k values", low=1)
    templates: str = "openai"  # TEMPLATE_SETS, or a FILE
    classnames: str | None = checked(None, flag="--classnames", path="file", optional=True)
    batch_size: int = count(64, "--batch-size")
    workers: int | None = workers_field()
    device: str = device_field()
    precision: str = precision_field()
    max_image_pixels: int = max_image_pixels_field()
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", model_paths(self.models))
        object.__setattr__(self, "ks", tuple(sorted(set(self.ks))))
        super().__post_init__()

    def validate(self) -> None:
        require_models(self.models)

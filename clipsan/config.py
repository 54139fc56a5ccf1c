"""What each command is told: the configs of clipsan's Python API (plain data, no torch).

``clipsan.api`` takes these; the command line builds them from its options.
Recipe settings are in ``clipsan.recipes.config``, the attack's in
``clipsan.attacks.config``, the training engine's in ``clipsan.engine.config``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from clipsan.attacks.config import AttackConfig
from clipsan.data.limits import MAX_IMAGE_PIXELS
from clipsan.engine.config import TrainConfig
from clipsan.recipes.config import CraftConfig, FineTuneConfig, RecipeConfig


@dataclass(frozen=True)
class CaptionData:
    """Clean image-caption pairs: a CSV/TSV manifest, webdataset shards or img2dataset files."""

    path: str
    image_key: str | None = None  # manifest columns (default: detected)
    caption_key: str | None = None
    delimiter: str | None = None
    limit: int | None = None  # a deterministic subset of N pairs
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are refused from their header (clipsan.data.limits)
    allow_outside_root: bool = False  # read files whose real path is outside the data folder (clipsan.data.paths)


@dataclass(frozen=True)
class PurifyConfig:
    model: str
    data: CaptionData
    recipe: RecipeConfig = field(default_factory=FineTuneConfig)
    training: TrainConfig | None = None  # None: the recipe's paper schedule (recipe.paper_schedule)
    out: str | None = None  # default: RUN_DIR/purify.safetensors (a folder RUN_DIR/purify for folder formats)
    out_format: str = "auto"  # auto (as the input came) | safetensors | hf | open_clip
    run_dir: str | None = None  # default: runs/purify-<UTC time>
    resume: bool = False
    arch: str | None = None  # default: metadata, else inferred from the weights
    device: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class PoisonConfig:
    model: str  # the clean model
    data: CaptionData
    attack: AttackConfig
    training: TrainConfig | None = None  # None: the papers' poisoning schedule (attacks.config.POISON_SCHEDULE)
    out: str | None = None  # default: RUN_DIR/poison.safetensors (a folder RUN_DIR/poison for folder formats)
    out_format: str = "auto"
    run_dir: str | None = None
    resume: bool = False
    arch: str | None = None
    device: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class CraftAdvConfig:
    model: str  # the suspect
    data: CaptionData
    craft: CraftConfig = field(default_factory=CraftConfig)
    reference: str | None = None  # clean reference CLIP for ABD's L_bd; None: plain AdvCLIP
    out: str | None = None  # default: RUN_DIR/generator.safetensors (+ .png)
    run_dir: str | None = None
    resume: bool = False
    arch: str | None = None
    seed: int = 0
    workers: int | None = None  # None: engine.config.default_workers()
    save_every: int = 500
    log_every: int = 10
    progress: bool = False
    device: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class EvalConfig:
    models: tuple[str, ...]
    data: str  # labelled set: ImageFolder, or a CSV image,label (with classnames)
    arch: str | None = None
    trigger: str | None = None  # a trigger spec, or "from-metadata"
    trigger_seed: int = 0
    trigger_size: int | None = None
    target: str | None = None  # default: banana, or the victim's recorded target
    ks: tuple[int, ...] = (1, 3, 5, 10)
    templates: str = "openai"  # openai | simple | photo | FILE
    classnames: str | None = None
    batch_size: int = 64
    workers: int | None = None  # None: engine.config.default_workers()
    device: str = "auto"
    precision: str = "auto"
    max_image_pixels: int = MAX_IMAGE_PIXELS
    allow_outside_root: bool = False


@dataclass(frozen=True)
class ScanConfig:
    models: tuple[str, ...]  # scanned one after another, one loaded at a time
    data: str | None = None  # probe images; None: synthetic world images
    reference: str | None = None  # a trusted model of the same architecture
    threshold: float | None = None  # overrides the decree threshold
    divergence_threshold: float | None = None  # overrides the reference-divergence threshold
    perturbation_threshold: float | None = None  # overrides the universal-perturbation threshold
    alignment_threshold: float | None = None  # makes the target-alignment signal count, at this ratio
    budget: str = "quick"  # quick | full (clipsan.scan.BUDGETS)
    run_dir: str | None = None  # with several models, one subfolder each
    arch: str | None = None
    reference_arch: str | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    probes: int | None = None  # override the budget's probe count
    steps: int | None = None  # override the budget's optimizer steps
    max_image_pixels: int = MAX_IMAGE_PIXELS  # of --data probe images
    allow_outside_root: bool = False
    progress: bool = False  # a progress bar per signal on stderr

    def __post_init__(self) -> None:
        if isinstance(self.models, (str, os.PathLike)):  # one path, not its characters
            object.__setattr__(self, "models", (os.fspath(self.models),))

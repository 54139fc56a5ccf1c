"""From parsed option groups to the API's configs."""

from __future__ import annotations

import sys
from dataclasses import fields
from enum import Enum
from pathlib import Path

from clipsan.cli.options import (
    ABDOptions,
    CleanCLIPOptions,
    CleanerCLIPOptions,
    DataOptions,
    PatchOptions,
    RunDirOptions,
    RuntimeOptions,
    SpeedOptions,
    TrainingOptions,
)
from clipsan.config import CaptionData
from clipsan.engine.config import PaperSchedule, TrainConfig
from clipsan.errors import UserError
from clipsan.recipes.config import ABDConfig, CleanCLIPConfig, CleanerCLIPConfig, CraftConfig, FineTuneConfig, RecipeConfig


def path(value: Path | None) -> str | None:
    return None if value is None else str(value)


def _plain(value):
    """Option values as configs hold them: Enum members by value, paths as strings."""
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def fill(config_cls, *groups, **given):
    """``config_cls`` from the option groups' fields of the same names, plus ``given`` ones."""
    names = {f.name for f in fields(config_cls)}
    values = {f.name: _plain(getattr(g, f.name)) for g in groups for f in fields(g) if f.name in names}
    return config_cls(**{**values, **given})


def caption_data(data: DataOptions) -> CaptionData:
    return fill(CaptionData, data, path=str(data.data))


def progress(runtime: RuntimeOptions) -> bool:
    return runtime.progress or sys.stderr.isatty()


def check_resume(run: RunDirOptions) -> None:
    if run.resume and run.run_dir is None:
        raise UserError("--resume needs --run-dir DIR (the run to continue)")


def train_config(training: TrainingOptions, run: RunDirOptions, runtime: RuntimeOptions, speed: SpeedOptions, schedule: PaperSchedule) -> TrainConfig:
    check_resume(run)
    return schedule.train_config(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        warmup_steps=training.warmup,
        weight_decay=training.weight_decay,
        betas=(training.beta1, training.beta2),
        eps=training.eps,
        grad_clip=training.grad_clip,
        max_steps=training.max_steps,
        batchnorm=training.batchnorm.value,
        seed=runtime.seed,
        workers=runtime.workers,
        save_every=run.save_every,
        log_every=run.log_every,
        progress=progress(runtime),
        compile=speed.compile,
        grad_checkpointing=speed.grad_checkpointing,
        deterministic=speed.deterministic,
    )


def training_job(
    model: str,
    out: str | None,
    arch: str | None,
    data: DataOptions,
    training: TrainingOptions,
    run: RunDirOptions,
    runtime: RuntimeOptions,
    speed: SpeedOptions,
    schedule: PaperSchedule,
    out_format: str = "auto",
) -> dict:
    """The fields purify's and poison's configs share: what to train, on what, how, and where."""
    return {
        "model": model,
        "data": caption_data(data),
        "training": train_config(training, run, runtime, speed, schedule),
        "out": out,
        "out_format": out_format,
        "run_dir": path(run.run_dir),
        "resume": run.resume,
        "arch": arch,
        "device": runtime.device,
        "precision": runtime.precision.value,
    }


def craft_config(patch: PatchOptions, *, epochs: int, batch_size: int, lr: float = CraftConfig.lr, max_steps: int | None) -> CraftConfig:
    return CraftConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, patch_area=patch.patch_area, bd_weight=patch.bd_weight, gan_width=patch.gan_width, max_steps=max_steps
    )


def recipe_config(method: str, cleanclip: CleanCLIPOptions, cleanerclip: CleanerCLIPOptions, abd: ABDOptions, patch: PatchOptions) -> RecipeConfig:
    if method == "ft":
        return FineTuneConfig()
    if method == "cleanclip":
        return CleanCLIPConfig(cleanclip.clip_weight, cleanclip.inmodal_weight)
    if method == "cleanerclip":
        return CleanerCLIPConfig(
            cleanclip.clip_weight,
            cleanclip.inmodal_weight,
            cleanerclip.subcaptions_per_epoch,
            cleanerclip.t_pos,
            cleanerclip.t_neg,
            cleanerclip.alpha,
            cleanerclip.beta,
        )
    craft = craft_config(patch, epochs=abd.craft_epochs, batch_size=abd.craft_batch_size, max_steps=abd.craft_max_steps)
    return ABDConfig(
        generator=path(abd.generator), reference=patch.reference, adv_prob=abd.adv_prob, eda=not abd.no_eda, objective=abd.abd_objective.value, craft=craft
    )

"""ABD's crafting stage: train the patch generator against a suspect in an open run directory.

``clipsan craft-adv`` runs it as a command (``clipsan.jobs.craft``); ``purify --method abd``
without ``--generator`` runs it first, in ``RUN_DIR/craft`` (a complete craft-adv run directory
of its own, stage "craft"), and fine-tunes in RUN_DIR itself; ``--resume`` continues whichever
stage was interrupted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from clipsan.checkpoints import LoadedModel, load_model
from clipsan.config import CraftConfig, TrainConfig
from clipsan.engine.loader import RecipeSamples
from clipsan.engine.loop import TrainResult, train
from clipsan.engine.rundir import RunDir, run_record
from clipsan.engine.runtime import Runtime
from clipsan.errors import UserError
from clipsan.models.frozen import frozen
from clipsan.recipes.abd.advclip import PatchBox, PatchGenerator
from clipsan.recipes.abd.craft import ADAM_BETAS, CraftAdv
from clipsan.recipes.abd.patch import read_generator_metadata, save_generator
from clipsan.seeding import derive_seed

NO_REFERENCE_WARNING = "warning: no --reference: crafting with the plain AdvCLIP objective (the paper's UAP column), without ABD's backdoor loss"


def craft_training(craft: CraftConfig, seed: int, workers: int | None, save_every: int, log_every: int, progress: bool) -> TrainConfig:
    """The engine's settings for crafting. AdvCLIP: Adam (AdamW without decay), betas (0.5, 0.999), constant rate, no warmup."""
    return TrainConfig(
        epochs=craft.epochs,
        batch_size=craft.batch_size,
        lr=craft.lr,
        warmup_steps=0,
        weight_decay=0.0,
        betas=ADAM_BETAS,
        schedule="constant",
        seed=seed,
        workers=workers,
        save_every=save_every,
        log_every=log_every,
        max_steps=craft.max_steps,
        progress=progress,
    )


@dataclass
class Crafted:
    """A trained generator, written to ``output`` (+ .png)."""

    output: Path
    result: TrainResult
    box: PatchBox
    objective: str  # advclip | advclip+bd
    bd_weight: float

    @property
    def png(self) -> Path:
        return self.output.with_suffix(".png")


def craft_record(command: str, suspect: LoadedModel, reference: LoadedModel | None, captions, craft: CraftConfig, training: TrainConfig, rt: Runtime) -> dict:
    inputs = {"model": suspect.record(), "reference": reference.record() if reference is not None else None, "data": str(captions.root)}
    return run_record(command, "craft-adv", asdict(craft), training, inputs, rt)


def craft_generator(
    run: RunDir,
    suspect: LoadedModel,
    reference: LoadedModel | None,
    captions,
    craft: CraftConfig,
    training: TrainConfig,
    rt: Runtime,
    *,
    resume: bool,
    out: Path,
    command: str,
    bd_weight: float | None = None,
) -> Crafted:
    """Train the generator against ``suspect`` on ``captions`` in an open run dir; write ``out`` (+ .png).

    ``bd_weight`` overrides ``craft.bd_weight`` and may be negative: the L_bd sign check
    (scripts/check_bd_sign.py) crafts with the opposite sign too; the configs take only >= 0.
    """
    size = suspect.model.image_size
    if reference is not None and reference.model.image_size != size:
        raise UserError(f"{reference.path}: reference takes {reference.model.image_size} px inputs, the suspect {size} px; they must match")
    box = PatchBox.for_image(size, craft.patch_area)
    generator = PatchGenerator(size, craft.gan_width, seed=derive_seed(training.seed, "generator"))
    ref_model = reference.model.to(rt.device) if reference is not None else None
    suspect.model.to(rt.device)
    recipe = CraftAdv(suspect.model, box, craft, ref_model, bd_weight, training.seed)
    samples = RecipeSamples(captions, recipe, size, suspect.model.tokenizer, training.seed)
    metadata = {
        "clipsan.command": command,
        "clipsan.method": "advclip+bd" if recipe.bd_weight else "advclip",
        "clipsan.source_sha256": suspect.sha256,
        "clipsan.reference_sha256": reference.sha256 if reference is not None else "none",
        "clipsan.craft": json.dumps(asdict(craft), sort_keys=True),
    }
    with frozen(suspect.model, ref_model):
        result = train(generator, recipe, samples, training, rt, run, resume=resume, checkpoint_metadata=metadata, stage="craft")
    if rt.is_main:
        save_generator(generator, box, out, metadata)
    rt.barrier()
    return Crafted(out, result, box, metadata["clipsan.method"], recipe.bd_weight)


def craft_stage(job, training: TrainConfig, reference_spec: str | None, craft: CraftConfig) -> Path:
    """purify --method abd's first stage: craft in RUN_DIR/craft (resumable), or reuse what it crafted.

    ``job``: the purify job (``clipsan.jobs.training.TrainingJob``); ``training``: the fine-tune's
    settings, whose seed, workers and logging the crafting shares.
    """
    rt, craft_dir = job.rt, job.run.path / "craft"
    out = craft_dir / "generator.safetensors"
    reference = rt.agree(load_model, reference_spec) if reference_spec else None
    if rt.agree(_crafted_before, out, job, craft, reference):
        return out
    if rt.is_main:
        job.notes(f"crafting the adversarial patch in {craft_dir} (stage craft)")
        if reference is None:
            job.notes(NO_REFERENCE_WARNING)
    crafting = craft_training(craft, training.seed, training.workers, training.save_every, training.log_every, training.progress)
    resume = job.resume and craft_dir.is_dir()
    with rt.agree(RunDir(craft_dir, is_main=rt.is_main).open, resume=resume) as run:
        run.write_config(craft_record("purify:craft", job.model, reference, job.captions, craft, crafting, rt))
        craft_generator(run, job.model, reference, job.captions, craft, crafting, rt, resume=resume, out=out, command="purify")
    return out


def _crafted_before(out: Path, job, craft: CraftConfig, reference: LoadedModel | None) -> bool:
    """Whether this run already crafted its generator (reusable only on --resume, with the same settings)."""
    if not out.is_file():
        return False
    if not job.resume:
        raise UserError(f"{job.run.path}: run directory already holds a crafted generator; pass --resume to continue it or choose another --run-dir")
    made = read_generator_metadata(out)
    wanted = (json.dumps(asdict(craft), sort_keys=True), reference.sha256 if reference else "none")
    if (made.get("clipsan.craft"), made.get("clipsan.reference_sha256")) != wanted:
        raise UserError(f"{out}: crafted with other options or --reference; --resume with the original --craft-*, patch and --reference options")
    return True

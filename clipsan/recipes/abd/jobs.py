"""ABD's crafting as jobs: ``clipsan craft-adv``, and purify --method abd's first stage.

Inside ``purify --method abd`` without ``--generator``, crafting runs in
``RUN_DIR/craft`` (a complete craft-adv run directory of its own, stage
"craft"), and fine-tuning in RUN_DIR itself; ``--resume`` continues whichever
stage was interrupted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from clipsan.checkpoint import LoadedModel, load_model
from clipsan.config import CraftAdvConfig
from clipsan.engine.config import TrainConfig
from clipsan.engine.loader import RecipeSamples
from clipsan.engine.loop import train
from clipsan.engine.rundir import RunDir, default_run_dir, versions
from clipsan.engine.runtime import Runtime, setup_runtime, shutdown_runtime
from clipsan.errors import UserError
from clipsan.finetune import open_captions_agreed, training_fields
from clipsan.models import tokenizer_for
from clipsan.recipes.abd.advclip import PatchBox, PatchGenerator
from clipsan.recipes.abd.craft import ADAM_BETAS, CraftAdv, frozen
from clipsan.recipes.abd.patch import read_generator_metadata, save_generator
from clipsan.recipes.config import CraftConfig
from clipsan.reports import CraftReport
from clipsan.seeding import derive_seed

NO_REFERENCE_WARNING = "warning: no --reference: crafting with the plain AdvCLIP objective (the paper's UAP column), without ABD's backdoor loss"


def craft_train_config(settings: CraftConfig, seed: int, workers: int, save_every: int = 500, log_every: int = 10, progress: bool = False) -> TrainConfig:
    # AdvCLIP: Adam (AdamW without decay), betas (0.5, 0.999), constant rate, no warmup.
    return TrainConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=0,
        weight_decay=0.0,
        betas=ADAM_BETAS,
        schedule="constant",
        seed=seed,
        workers=workers,
        save_every=save_every,
        log_every=log_every,
        max_steps=settings.max_steps,
        progress=progress,
    )


def craft_in_run(
    run: RunDir,
    suspect: LoadedModel,
    reference: LoadedModel | None,
    captions,
    settings: CraftConfig,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    resume: bool,
    out: Path,
    command: str,
    bd_weight: float | None = None,
) -> CraftReport:
    """Train the generator against ``suspect`` on ``captions`` in an open run dir; write ``out`` (+ .png).

    ``bd_weight`` overrides ``settings.bd_weight`` and may be negative: the L_bd sign check
    (scripts/check_bd_sign.py) crafts with the opposite sign too; the command line offers only >= 0.
    """
    size = suspect.model.image_size
    if reference is not None and reference.model.image_size != size:
        raise UserError(f"{reference.path}: reference takes {reference.model.image_size} px inputs, the suspect {size} px; they must match")
    box = PatchBox.for_image(size, settings.patch_area)
    generator = PatchGenerator(size, settings.gan_width, seed=derive_seed(cfg.seed, "generator"))
    ref_model = reference.model.to(rt.device) if reference is not None else None
    suspect.model.to(rt.device)
    weight = settings.bd_weight if bd_weight is None else bd_weight
    recipe = CraftAdv(suspect.model, box, ref_model, weight, settings.gan_width, settings.lr, cfg.seed)
    samples = RecipeSamples(captions, recipe, size, tokenizer_for(suspect.arch, suspect.model.context_length), cfg.seed)
    metadata = {
        "clipsan.command": command,
        "clipsan.method": "advclip+bd" if recipe.bd_weight else "advclip",
        "clipsan.source_sha256": suspect.sha256,
        "clipsan.reference_sha256": reference.sha256 if reference is not None else "none",
        "clipsan.craft": json.dumps(asdict(settings), sort_keys=True),
    }
    with frozen(suspect.model, ref_model):
        result = train(generator, recipe, samples, cfg, rt, run, resume=resume, checkpoint_metadata=metadata, stage="craft")
    png = out.with_suffix(".png")
    if rt.is_main:
        save_generator(generator, box, out, metadata)
    rt.barrier()
    return CraftReport(
        output=str(out),
        run_dir=str(run.path),
        method="craft-adv",
        source_sha256=suspect.sha256,
        **suspect.report_fields(),
        **training_fields(result, captions),
        patch_png=str(png),
        objective=metadata["clipsan.method"],
        bd_weight=recipe.bd_weight,
        patch_box=asdict(box),
        reference_sha256=reference.sha256 if reference is not None else None,
    )


def _craft_config_record(
    command: str, suspect: LoadedModel, reference: LoadedModel | None, captions, settings: CraftConfig, cfg: TrainConfig, rt: Runtime
) -> dict:
    def model_record(m):
        return None if m is None else {"path": str(m.path), "sha256": m.sha256, "arch": m.arch}

    return {
        "command": command,
        "argv": sys.argv,
        "method": "craft-adv",
        "recipe": asdict(settings),
        "training": cfg.fingerprint(),
        "inputs": {"model": model_record(suspect), "reference": model_record(reference), "data": str(captions.root)},
        "runtime": {"device": str(rt.device), "precision": rt.precision, "world_size": rt.world_size},
        "versions": versions(),
    }


def run_craft_adv(job: CraftAdvConfig, captions, notes=print) -> CraftReport:
    """``clipsan craft-adv``: train a generator against job.model on ``captions``; write it and its PNG."""
    rt = setup_runtime(job.device, job.precision)
    try:
        captions = open_captions_agreed(rt, captions)
        suspect = rt.agree(load_model, job.model, arch=job.arch)
        reference = rt.agree(load_model, job.reference) if job.reference else None
        if rt.is_main:
            suspect.announce(notes)
            reference.announce(notes, role="reference") if reference else notes(NO_REFERENCE_WARNING)
            notes(f"data {captions.describe()}")
        cfg = craft_train_config(job.craft, job.seed, job.workers, job.save_every, job.log_every, job.progress)
        run_path = Path(rt.broadcast_object(str(Path(job.run_dir) if job.run_dir else default_run_dir("craft-adv"))))
        with rt.agree(RunDir(run_path, is_main=rt.is_main).open, resume=job.resume) as run:
            run.write_config(_craft_config_record("craft-adv", suspect, reference, captions, job.craft, cfg, rt))
            out = Path(job.out) if job.out else run.path / "generator.safetensors"
            return craft_in_run(run, suspect, reference, captions, job.craft, cfg, rt, resume=job.resume, out=out, command="craft-adv")
    finally:
        shutdown_runtime(rt)


def craft_for_fine_tune(ctx, reference_spec: str | None, settings: CraftConfig) -> Path:
    """purify --method abd's first stage: craft in RUN_DIR/craft (resumable), or reuse what it crafted."""
    craft_dir = ctx.run.path / "craft"
    out = craft_dir / "generator.safetensors"
    reference = ctx.rt.agree(load_model, reference_spec) if reference_spec else None
    if ctx.rt.agree(_crafted_before, out, ctx, settings, reference):
        return out
    if ctx.rt.is_main:
        ctx.notes(f"crafting the adversarial patch in {craft_dir} (stage craft)")
        if reference is None:
            ctx.notes(NO_REFERENCE_WARNING)
    cfg = craft_train_config(settings, ctx.cfg.seed, ctx.cfg.workers, ctx.cfg.save_every, ctx.cfg.log_every, ctx.cfg.progress)
    resume = ctx.job.resume and craft_dir.is_dir()
    with ctx.rt.agree(RunDir(craft_dir, is_main=ctx.rt.is_main).open, resume=resume) as run:
        run.write_config(_craft_config_record("purify:craft", ctx.loaded, reference, ctx.captions, settings, cfg, ctx.rt))
        craft_in_run(run, ctx.loaded, reference, ctx.captions, settings, cfg, ctx.rt, resume=resume, out=out, command="purify")
    return out


def _crafted_before(out: Path, ctx, settings: CraftConfig, reference: LoadedModel | None) -> bool:
    """Whether this run already crafted its generator (reusable only on --resume, with the same settings)."""
    if not out.is_file():
        return False
    if not ctx.job.resume:
        raise UserError(f"{ctx.run.path}: run directory already holds a crafted generator; pass --resume to continue it or choose another --run-dir")
    made = read_generator_metadata(out)
    wanted = (json.dumps(asdict(settings), sort_keys=True), reference.sha256 if reference else "none")
    if (made.get("clipsan.craft"), made.get("clipsan.reference_sha256")) != wanted:
        raise UserError(f"{out}: crafted with other options or --reference; --resume with the original --craft-*, patch and --reference options")
    return True

"""A whole fine-tuning job: load model and data, train with a recipe, save the result.

``purify`` (every defense) and ``poison`` are this job with different recipes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from clipsan.checkpoint import load_model
from clipsan.engine.config import TrainConfig
from clipsan.engine.loader import RecipeSamples
from clipsan.engine.loop import train
from clipsan.engine.rundir import RunDir, default_run_dir, versions
from clipsan.engine.runtime import Runtime, setup_runtime, shutdown_runtime
from clipsan.engine.speed import configure_kernels
from clipsan.layouts.output import plan_output, write_output
from clipsan.models import tokenizer_for
from clipsan.recipes.base import RunContext
from clipsan.reports import TrainingReport

INHERITED_METADATA = ("clipsan.trigger", "clipsan.target")


@dataclass
class JobSpec:
    command: str  # "purify", "poison"
    model: str
    arch: str | None
    out: str | None
    run_dir: str | None
    resume: bool
    device: str = "auto"
    precision: str = "auto"
    metadata: dict | None = None  # extra safetensors metadata for the output
    out_format: str = "auto"  # clipsan.layouts.output.OUT_FORMATS


def training_fields(result, captions) -> dict:
    """The report fields a finished training run fills in (``clipsan.reports.TrainingReport``)."""
    return {
        "steps": result.steps,
        "epochs": result.epochs_completed,
        "resumed_from_step": result.resumed_from,
        "seconds": round(result.seconds, 2),
        "samples": len(captions),
        "skipped": result.skipped,
        "final": result.last,
    }


def open_captions_agreed(rt: Runtime, captions):
    """``captions``, a caption dataset or a function opening one, opened on every process alike.

    Opened here, after the process group is joined, a bad --data ends every torchrun
    process with one message (``Runtime.agree``) instead of one per process.
    """
    return rt.agree(lambda: captions() if callable(captions) else captions)


def run_fine_tune(job: JobSpec, recipe, captions, cfg: TrainConfig, notes=print) -> TrainingReport:
    """Fine-tune job.model with ``recipe``; ``captions``: a caption dataset or a function opening one."""
    rt = setup_runtime(job.device, job.precision)
    configure_kernels(cfg.deterministic, rt)  # before any CUDA kernel (ABD crafts in prepare_run)
    try:
        captions = open_captions_agreed(rt, captions)
        loaded = rt.agree(load_model, job.model, arch=job.arch)
        if rt.is_main:
            loaded.announce(notes)
            notes(f"data {captions.describe()}")
        run_path = Path(job.run_dir) if job.run_dir else default_run_dir(job.command)
        run_path = Path(rt.broadcast_object(str(run_path)))
        with rt.agree(RunDir(run_path, is_main=rt.is_main).open, resume=job.resume) as run:
            # Decided before training: a --out that cannot be written fails now, not after the run.
            output = rt.agree(plan_output, job.out_format, job.out, run.path / job.command, loaded.source, loaded.model.model_cfg, loaded.arch)
            run.write_config(
                {
                    "command": job.command,
                    "argv": sys.argv,
                    "method": recipe.name,
                    "recipe": recipe.options(),
                    "training": cfg.fingerprint(),
                    "inputs": {"model": {"path": str(loaded.path), "sha256": loaded.sha256, "arch": loaded.arch}, "data": str(captions.root)},
                    "runtime": {"device": str(rt.device), "precision": rt.precision, "world_size": rt.world_size},
                    "versions": versions(),
                }
            )
            model = loaded.model
            recipe.prepare(captions)
            recipe.prepare_run(RunContext(job, loaded, captions, cfg, rt, run, notes))
            samples = RecipeSamples(captions, recipe, model.image_size, tokenizer_for(model.arch, model.context_length), cfg.seed)
            metadata = {"clipsan.command": job.command, "clipsan.method": recipe.name, "clipsan.source_sha256": loaded.sha256}
            # A defended victim keeps the record of the attack it was built with, so
            # `clipsan eval --trigger from-metadata` can measure what the defense left.
            metadata.update({k: v for k, v in loaded.metadata.items() if k in INHERITED_METADATA})
            metadata.update(job.metadata or {})
            result = train(model, recipe, samples, cfg, rt, run, resume=job.resume, checkpoint_metadata=metadata)
            if rt.is_main:
                write_output(output, model.cpu(), loaded.source, metadata)
            return TrainingReport(
                output=str(output.path),
                run_dir=str(run.path),
                method=recipe.name,
                source_sha256=loaded.sha256,
                **training_fields(result, captions),
                **loaded.report_fields(),
                output_format=output.format,
            )
    finally:
        shutdown_runtime(rt)

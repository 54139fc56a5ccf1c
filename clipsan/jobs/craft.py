"""``clipsan craft-adv``: train ABD's patch generator against MODEL; write it and its PNG."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from clipsan.checkpoints import load_model
from clipsan.config import CraftAdvConfig
from clipsan.jobs.training import Notes, job_runtime, open_job
from clipsan.recipes.abd.crafting import NO_REFERENCE_WARNING, craft_generator, craft_training
from clipsan.reports import CraftReport


def run_craft_adv(config: CraftAdvConfig, notes: Notes) -> CraftReport:
    training = craft_training(config.craft, config.seed, config.workers, config.save_every, config.log_every, config.progress)
    with job_runtime(config.device, config.precision) as rt, open_job("craft-adv", rt, config, notes) as job:
        reference = rt.agree(load_model, config.reference) if config.reference else None
        if rt.is_main:
            reference.announce(notes, role="reference") if reference else notes(NO_REFERENCE_WARNING)
        job.record("craft-adv", asdict(config.craft), training, reference=reference.record() if reference is not None else None)
        out = Path(config.out) if config.out else job.run.path / "generator.safetensors"
        crafted = craft_generator(job.run, job.model, reference, job.captions, config.craft, training, rt, resume=job.resume, out=out, command="craft-adv")
        return CraftReport(
            **asdict(job.report(str(out), "craft-adv", crafted.result)),
            patch_png=str(crafted.png),
            objective=crafted.objective,
            bd_weight=crafted.bd_weight,
            patch_box=asdict(crafted.box),
            reference_sha256=reference.sha256 if reference is not None else None,
        )

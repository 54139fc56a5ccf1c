"""``clipsan purify``: fine-tune MODEL on clean pairs with a defense recipe; write it back in its layout."""

from __future__ import annotations

from clipsan.config import PurifyConfig
from clipsan.jobs.training import Notes, job_runtime, open_job
from clipsan.recipes import build_recipe
from clipsan.reports import TrainingReport


def run_purify(config: PurifyConfig, notes: Notes, recipe=None) -> TrainingReport:
    """``recipe``: a recipe object to fine-tune with instead of the one ``config.recipe`` describes
    (research code and tests: the attacker's ``Poison`` on a hand-made plan, say)."""
    training = config.schedule
    recipe = recipe or build_recipe(config.recipe)
    with job_runtime(config.device, config.precision, training.deterministic) as rt, open_job("purify", rt, config, notes) as job:
        output = job.plan_output(config.out_format, config.out)
        job.record(recipe.name, recipe.options(), training)
        recipe.prepare(job.captions)
        recipe.prepare_run(job, training)  # ABD crafts its patch here (RUN_DIR/craft)
        metadata = job.output_metadata(recipe.name)
        result = job.fit(job.model.model, recipe, training, metadata)
        job.write(output, metadata)
        return job.report(str(output.path), recipe.name, result, output.format)

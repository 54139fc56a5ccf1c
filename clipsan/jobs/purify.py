"""``clipsan purify``: fine-tune MODEL on clean pairs with a defense recipe; write it back in its layout.

Part of --data is held out first (``clipsan.data.holdout``) and never trained on: the model's
image<->text retrieval on it (``clipsan.evaluation.retrieval``) is measured before training, at
every epoch end (metrics.jsonl) and after, so the report says whether the model still works; the
scan's signals run on the input and the output with the held-out images as probes, and with
--until-clean at every epoch end too, training stopping at the first check that passes
(``clipsan.jobs.verification``), so the report says whether the backdoor evidence is gone.
"""

from __future__ import annotations

import functools
from dataclasses import asdict

from clipsan.config import PurifyConfig, TrainConfig
from clipsan.config.runtime import resolve_workers
from clipsan.data.holdout import HeldOutSplit, hold_out
from clipsan.engine.loop import TrainResult
from clipsan.errors import UserError
from clipsan.evaluation.retrieval import Retrieval, retrieval
from clipsan.jobs.training import Notes, TrainingJob, job_runtime, open_job
from clipsan.jobs.verification import Verification
from clipsan.recipes import build_recipe
from clipsan.reports import PurifyReport, recall_text


def run_purify(config: PurifyConfig, notes: Notes, recipe=None) -> PurifyReport:
    """``recipe``: a recipe object to fine-tune with instead of the one ``config.recipe`` describes
    (research code and tests: the attacker's ``Poison`` on a hand-made plan, say)."""
    training = config.schedule
    recipe = recipe or build_recipe(config.recipe)
    with job_runtime(config.device, config.precision, training.deterministic) as rt, open_job("purify", rt, config, notes) as job:
        output = job.plan_output(config.out_format, config.out)
        split = rt.agree(hold_out, job.captions, config.evidence)
        rt.agree(lambda: _refuse_another_split(job, split) if rt.is_main else None)
        job.captions = split.train  # from here on (ABD's crafting included) only the rest is seen
        if rt.is_main:
            notes(split.describe())
        # Before anything trains: a --scan-report that does not match, or a check asked for that cannot run, is refused now.
        verification = rt.agree(Verification.plan, config.evidence, training.seed, split, job.model, str(config.data.path), rt)
        rt.agree(lambda: _refuse_other_checks(job, verification) if rt.is_main else None)
        job.record(recipe.name, recipe.options(), training, holdout=split.record(), verification=verification.record())
        recipe.prepare(job.captions)
        recipe.prepare_run(job, training)  # ABD crafts its patch here (RUN_DIR/craft)
        metadata = job.output_metadata(recipe.name)
        if split.held is None:
            result, utility = job.fit(job.model.model, recipe, training, metadata), None
        else:
            result, utility = _fit_measured(job, recipe, training, metadata, _held_out_retrieval(split, job, training), verification)
        job.write(output, metadata)
        report = job.report(str(output.path), recipe.name, result, output.format)
        checks = verification.report(job.run.path)  # writes RUN_DIR/verification.json and .png: while the run dir is still locked
    return PurifyReport(**asdict(report), holdout=split.record(), utility=utility, verification=checks)


def _fit_measured(job: TrainingJob, recipe, training: TrainConfig, metadata: dict[str, str], measure, verification: Verification) -> tuple[TrainResult, dict]:
    """Train with held-out retrieval (and the backdoor checks) before, at every epoch end (metrics.jsonl)
    and after; returns the result and the report's utility. Measured anew on --resume: it is the input model's."""
    model = job.model.model.to(job.rt.device)
    before = _announced(measure(model), "before training", job)
    verification.check_input(model, before, job.notes)
    result = job.fit(model, recipe, training, metadata, measuring=verification.measuring(measure, job.notes))
    after = _announced(measure(model), "after training", job)
    verification.check_output(model, after, result, job.notes)
    return result, {"pairs": before.pairs, "corrupt_image": before.corrupt_image, "before": before.recalls, "after": after.recalls}


def _refuse_other_checks(job: TrainingJob, verification: Verification) -> None:
    """A resumed run checks and stops as it started: its checks so far were made with those settings."""
    recorded = job.run.read_config() if job.resume else None
    if recorded is None or "verification" not in recorded.get("inputs", {}):
        return
    before, now = recorded["inputs"]["verification"], verification.record()
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if changed:
        raise UserError(f"the run in {job.run.path} was checked with other settings ({', '.join(changed)}); --resume with the original ones")


def _refuse_another_split(job: TrainingJob, split: HeldOutSplit) -> None:
    """A resumed run trains on the pairs it started with (a run recorded before --holdout held none out)."""
    recorded = job.run.read_config() if job.resume else None
    if recorded is None:
        return
    held = recorded.get("inputs", {}).get("holdout", {"pairs": 0})["pairs"]
    if held != split.pairs:
        raise UserError(f"--holdout: the run in {job.run.path} held out {held} pairs, this command {split.pairs}; --resume with the original --holdout")


def _held_out_retrieval(split: HeldOutSplit, job: TrainingJob, training: TrainConfig):
    """model -> Retrieval on the held-out pairs, in batches of a process's share of the training batch (it fits)."""
    batch_size = max(1, training.batch_size // job.rt.world_size)
    return functools.partial(retrieval, pairs=split.held, device=job.rt.device, batch_size=batch_size, workers=resolve_workers(training.workers))


def _announced(measured: Retrieval, when: str, job: TrainingJob) -> Retrieval:
    if job.rt.is_main:
        job.notes(f"held-out retrieval {when}: {recall_text(measured.recalls)}")
    return measured

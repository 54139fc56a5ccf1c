"""``clipsan poison``: build a backdoored victim from a clean model (the papers' poisoning stage).

1. The plan (``clipsan.attacks.plan``): which pairs carry the trigger and what their captions become.
2. For ``badclip``, a patch optimized on the frozen clean model (``clipsan.attacks.badclip``),
   kept in the run directory so ``--resume`` reuses it.
3. Fine-tuning with the ``Poison`` recipe on the same skeleton as purify: the same checkpoints,
   resume and interrupt behaviour.

The victim's metadata records the trigger (``clipsan.trigger``), target and rate, so
``clipsan eval VICTIM --trigger from-metadata`` reproduces the attack.
"""

from __future__ import annotations

from dataclasses import asdict

from clipsan.attacks.badclip import badclip_trigger
from clipsan.attacks.plan import dataset_captions, plan_poison, victim_metadata
from clipsan.attacks.recipe import Poison
from clipsan.attacks.triggers import parse_trigger
from clipsan.config import PoisonConfig
from clipsan.config.runtime import resolve_workers
from clipsan.jobs.training import Notes, job_runtime, open_job
from clipsan.reports import PoisonReport


def run_poison(config: PoisonConfig, notes: Notes) -> PoisonReport:
    training, attack = config.schedule, config.attack
    with job_runtime(config.device, config.precision, training.deterministic) as rt, open_job("poison", rt, config, notes) as job:
        output = job.plan_output(config.out_format, config.out)
        plan = rt.agree(plan_poison, dataset_captions(job.captions), attack, training.seed)
        badclip = None
        if attack.is_badclip:
            trigger, badclip = badclip_trigger(job, attack, training.seed, resolve_workers(training.workers))
        else:
            trigger = rt.agree(parse_trigger, attack.trigger, seed=attack.trigger_seed, size=attack.trigger_size)
        if rt.is_main:
            notes(f"poisoning {len(plan.captions)} of {plan.eligible} pairs ({plan.mode} captions) with {trigger!r}, target {attack.target!r}")
        recipe = Poison(trigger, plan, attack)
        job.record(recipe.name, recipe.options(), training)
        metadata = {**job.output_metadata(recipe.name), **victim_metadata(trigger, attack, plan)}
        result = job.fit(job.model.model, recipe, training, metadata)
        job.write(output, metadata)
        report = job.report(str(output.path), recipe.name, result, output.format)
    return PoisonReport(
        **asdict(report),
        trigger={k: v for k, v in trigger.to_spec().items() if k != "patch"},
        target=attack.target,
        rate=attack.rate,
        poisoned=len(plan.captions),
        eligible=plan.eligible,
        caption_mode=plan.mode,
        badclip=badclip,
    )

"""``clipsan eval``: zero-shot CA@k (and ASR@k with a trigger) of several models on one labelled set."""

from __future__ import annotations

import json

from clipsan.attacks.triggers import parse_trigger, trigger_from_spec
from clipsan.checkpoints import load_model
from clipsan.config import EvalConfig
from clipsan.config.attacks import DEFAULT_TARGET
from clipsan.config.jobs import FROM_METADATA
from clipsan.config.runtime import resolve_workers
from clipsan.data.labelled import open_labelled_dataset
from clipsan.engine.runtime import local_runtime
from clipsan.errors import UserError
from clipsan.evaluation.templates import load_templates
from clipsan.evaluation.zeroshot import zero_shot
from clipsan.jobs.training import Notes
from clipsan.reports import EvalReport


def _trigger_for(config: EvalConfig, metadata: dict, model_path):
    """The trigger and target for one model: from the flags, or recorded in the victim's metadata."""
    if config.trigger is None:
        return None, config.target
    if config.trigger != FROM_METADATA:
        return parse_trigger(config.trigger, seed=config.trigger_seed, size=config.trigger_size), config.target or DEFAULT_TARGET
    if "clipsan.trigger" not in metadata:
        raise UserError(f"{model_path}: --trigger {FROM_METADATA}, but the file records no trigger (not made by clipsan poison)")
    trigger = trigger_from_spec(json.loads(metadata["clipsan.trigger"]))
    return trigger, config.target or metadata.get("clipsan.target", DEFAULT_TARGET)


def run_evaluate(config: EvalConfig, notes: Notes) -> EvalReport:
    rt = local_runtime(config.device, config.precision)
    dataset = open_labelled_dataset(config.data, config.classnames, max_image_pixels=config.max_image_pixels, allow_outside_root=config.allow_outside_root)
    templates = load_templates(config.templates)
    notes(f"eval set {dataset.describe()}; {len(templates)} templates")
    rows = []
    for model in config.models:
        loaded = load_model(model, arch=config.arch)
        loaded.announce(notes)
        trigger, target = _trigger_for(config, loaded.metadata, loaded.path)
        figures = zero_shot(
            loaded.model.to(rt.device),
            dataset,
            rt,
            templates=templates,
            ks=config.ks,
            trigger=trigger,
            target=target,
            batch_size=config.batch_size,
            workers=resolve_workers(config.workers),
        )
        rows.append(
            {
                "model": str(model),
                **loaded.report_fields(),
                "sha256": loaded.sha256,
                "trigger": trigger.to_spec() if trigger is not None else None,
                "target": target if trigger is not None else None,
                **figures,
            }
        )
    return EvalReport(data=str(dataset.root), classes=len(dataset.classnames), templates=config.templates, topk=list(config.ks), models=rows)

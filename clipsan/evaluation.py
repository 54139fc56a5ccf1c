"""Zero-shot evaluation of one or several models on a labelled set, clean and triggered."""

from __future__ import annotations

import json

from clipsan.attacks.triggers import parse_trigger, trigger_from_spec
from clipsan.checkpoint import load_model
from clipsan.config import EvalConfig
from clipsan.data.labelled import open_labelled_dataset
from clipsan.engine.config import resolve_workers
from clipsan.engine.runtime import local_runtime
from clipsan.errors import UserError
from clipsan.reports import EvalReport
from clipsan.zeroshot import evaluate, load_templates

FROM_METADATA = "from-metadata"


def _trigger_for(spec: EvalConfig, metadata: dict, model_path):
    """The trigger and target for one model: from the flags, or recorded in the victim's metadata."""
    if spec.trigger is None:
        return None, spec.target
    if spec.trigger != FROM_METADATA:
        return parse_trigger(spec.trigger, seed=spec.trigger_seed, size=spec.trigger_size), spec.target or "banana"
    if "clipsan.trigger" not in metadata:
        raise UserError(f"{model_path}: --trigger from-metadata, but the file records no trigger (not made by clipsan poison)")
    trigger = trigger_from_spec(json.loads(metadata["clipsan.trigger"]))
    return trigger, spec.target or metadata.get("clipsan.target", "banana")


def evaluate_models(spec: EvalConfig, notes=print) -> EvalReport:
    rt = local_runtime(spec.device, spec.precision)
    dataset = open_labelled_dataset(spec.data, spec.classnames, max_image_pixels=spec.max_image_pixels, allow_outside_root=spec.allow_outside_root)
    templates = load_templates(spec.templates)
    notes(f"eval set {dataset.describe()}; {len(templates)} templates")
    rows = []
    for model_spec in spec.models:
        loaded = load_model(model_spec, arch=spec.arch)
        loaded.announce(notes)
        trigger, target = _trigger_for(spec, loaded.metadata, loaded.path)
        result = evaluate(
            loaded.model.to(rt.device),
            dataset,
            templates=templates,
            ks=spec.ks,
            trigger=trigger,
            target=target,
            batch_size=spec.batch_size,
            workers=resolve_workers(spec.workers),
            device=rt.device,
            precision=rt.precision,
        )
        rows.append(
            {
                "model": str(model_spec),
                **loaded.report_fields(),
                "sha256": loaded.sha256,
                "trigger": trigger.to_spec() if trigger is not None else None,
                "target": target if trigger is not None else None,
                **result,
            }
        )
    return EvalReport(data=str(dataset.root), classes=len(dataset.classnames), templates=spec.templates, topk=list(spec.ks), models=rows)

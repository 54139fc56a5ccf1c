"""Zero-shot evaluation of one or several models on a labelled set, clean and triggered."""

from __future__ import annotations

import json
from dataclasses import dataclass

from clipsan.checkpoint import load_model
from clipsan.data.labelled import open_labelled_dataset
from clipsan.engine.runtime import setup_runtime
from clipsan.errors import UserError
from clipsan.triggers import parse_trigger, trigger_from_spec
from clipsan.zeroshot import evaluate, load_templates

FROM_METADATA = "from-metadata"


@dataclass
class EvalSpec:
    models: list[str]
    data: str
    arch: str | None = None
    trigger: str | None = None  # a trigger spec, or "from-metadata"
    trigger_seed: int = 0
    trigger_size: int | None = None
    target: str | None = None
    ks: tuple[int, ...] = (1, 3, 5, 10)
    templates: str = "openai"
    classnames: str | None = None
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"


def _trigger_for(spec: EvalSpec, metadata: dict, model_path):
    """The trigger and target for one model: from the flags, or recorded in the victim's metadata."""
    if spec.trigger is None:
        return None, spec.target
    if spec.trigger != FROM_METADATA:
        return parse_trigger(spec.trigger, seed=spec.trigger_seed, size=spec.trigger_size), spec.target or "banana"
    if "clipsan.trigger" not in metadata:
        raise UserError(f"{model_path}: --trigger from-metadata, but the file records no trigger (not made by clipsan poison)")
    trigger = trigger_from_spec(json.loads(metadata["clipsan.trigger"]))
    return trigger, spec.target or metadata.get("clipsan.target", "banana")


def evaluate_models(spec: EvalSpec, notes=print) -> dict:
    rt = setup_runtime(spec.device, spec.precision)
    dataset = open_labelled_dataset(spec.data, classnames_file=spec.classnames)
    templates = load_templates(spec.templates)
    notes(f"eval set {dataset.describe()}; {len(templates)} templates")
    rows = []
    for model_spec in spec.models:
        loaded = load_model(model_spec, arch=spec.arch)
        notes(f"model {loaded.path}: arch {loaded.describe_arch()}")
        trigger, target = _trigger_for(spec, loaded.metadata, loaded.path)
        result = evaluate(
            loaded.model.to(rt.device),
            dataset,
            templates=templates,
            ks=spec.ks,
            trigger=trigger,
            target=target,
            batch_size=spec.batch_size,
            workers=spec.workers,
            device=rt.device,
            precision=rt.precision,
        )
        rows.append(
            {
                "model": str(model_spec),
                "arch": loaded.arch,
                "sha256": loaded.sha256,
                "trigger": trigger.to_spec() if trigger is not None else None,
                "target": target if trigger is not None else None,
                **result,
            }
        )
    return {"data": str(dataset.root), "classes": len(dataset.classnames), "templates": spec.templates, "topk": list(spec.ks), "models": rows}

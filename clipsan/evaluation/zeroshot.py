"""Zero-shot classification: class-text embeddings and the eval loop.

``evaluate`` reports CA@k on clean images and, given a trigger, ASR@k on triggered copies of
the images whose true class is not the target (``clipsan.evaluation.metrics``). The towers run
under the runtime's autocast (``Runtime.encode``); logits (the model's own: scale, and SigLIP's bias)
are computed in fp32 outside it.
Inference only; the model's train/eval mode is restored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from clipsan.data.tokens import drop_padding
from clipsan.engine.runtime import Runtime
from clipsan.errors import UserError
from clipsan.evaluation.loader import labelled_batches
from clipsan.evaluation.metrics import TopkMeter, attack_success, topk_correct
from clipsan.evaluation.templates import fill


def class_text_embeddings(model: Any, classnames: Sequence[str], templates: Sequence[str], rt: Runtime, batch_size: int = 256) -> torch.Tensor:
    """(C, D) float32 unit vectors: per-template text embeddings normalised, averaged, renormalised (as CLIP does)."""
    if not classnames or not templates:
        raise ValueError("class_text_embeddings needs at least one class name and one template")
    texts = [fill(t, name) for name in classnames for t in templates]
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = drop_padding(model.tokenize(texts[start : start + batch_size])).to(rt.device)
            chunks.append(F.normalize(rt.encode(model.encode_text, tokens), dim=-1))
    per_template = torch.cat(chunks).view(len(classnames), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


def resolve_target(target: str | int | None, classnames: Sequence[str]) -> int:
    """The target's class index: exact name, else a unique case-insensitive match, else an index."""
    if target is None:
        raise UserError("a trigger needs a target class (--target NAME)")
    if isinstance(target, int) and not isinstance(target, bool):
        if 0 <= target < len(classnames):
            return target
        raise UserError(f"target index {target}: expected 0..{len(classnames) - 1}")
    name = str(target)
    if name in classnames:
        return list(classnames).index(name)
    folded = [i for i, c in enumerate(classnames) if c.casefold() == name.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(map(repr, list(classnames)[:10])) + (", ..." if len(classnames) > 10 else "")
    raise UserError(f"target {name!r} is not one of the {len(classnames)} class names ({shown})")


def zero_shot(
    model: Any,
    dataset: Any,
    rt: Runtime | None = None,
    *,
    templates: Sequence[str],
    ks: Sequence[int] = (1, 3, 5, 10),
    trigger: Any = None,
    target: str | int | None = None,
    batch_size: int = 64,
    workers: int = 0,
) -> dict[str, Any]:
    """Zero-shot CA@k (and ASR@k when ``trigger`` is given) of ``model`` on a labelled ``dataset``.

    Returns {"ca": {"1": f, ...}, "asr": {...} | None, "n_images": N,
    "n_asr_images": M, "skipped": {...}}: fractions in [0, 1]; ASR is over the
    M readable images whose true class is not the target (with M = 0 each
    figure is None; without a trigger "asr" and "n_asr_images" are None).
    Corrupt images are skipped and counted under "corrupt_image", next to the
    dataset's own skip counts. Trigger positions use the dataset index.
    """
    rt = rt or Runtime(torch.device("cpu"), "fp32")
    classnames = list(dataset.classnames)
    target_index = resolve_target(target, classnames) if trigger is not None else None
    was_training = model.training
    model.eval()
    try:
        class_embeddings = class_text_embeddings(model, classnames, templates, rt)
        clean, attacked, corrupt = _score(model, dataset, class_embeddings, ks, trigger, target_index, batch_size, workers, rt)
    finally:
        model.train(was_training)
    if clean.count == 0:
        where = getattr(dataset, "root", "the evaluation set")
        raise UserError(f"{where}: no readable images to evaluate ({corrupt} corrupt)")
    skipped = dict(getattr(dataset, "skipped", {}) or {})
    skipped["corrupt_image"] = skipped.get("corrupt_image", 0) + corrupt
    return {
        "ca": _as_json_fractions(clean),
        "asr": _as_json_fractions(attacked) if attacked is not None else None,
        "n_images": clean.count,
        "n_asr_images": attacked.count if attacked is not None else None,
        "skipped": skipped,
    }


def _score(model, dataset, class_embeddings, ks, trigger, target_index, batch_size, workers, rt: Runtime):
    """Run every batch; returns (clean meter, attacked meter or None, corrupt count)."""
    device = rt.device
    loader = labelled_batches(dataset, model.image_size, batch_size, workers, pin_memory=device.type == "cuda")
    clean = TopkMeter(ks)
    attacked = TopkMeter(ks) if trigger is not None else None
    corrupt = 0
    with torch.inference_mode():
        for batch in loader:
            corrupt += batch["corrupt"]
            if batch["images"] is None:
                continue
            images = batch["images"].to(device, non_blocking=True)
            labels = batch["labels"].to(device)
            clean.update(topk_correct(_logits(model, images, class_embeddings, rt), labels, ks))
            if attacked is not None:
                attacked.update(_attack_batch(model, images, labels, batch["ids"], class_embeddings, trigger, target_index, ks, rt))
    return clean, attacked, corrupt


def _attack_batch(model, images, labels, ids, class_embeddings, trigger, target_index, ks, rt: Runtime):
    """ASR masks for one batch; target-class images are not triggered (they don't count)."""
    keep = labels != target_index
    if not bool(keep.any()):
        return {k: torch.zeros(0, dtype=torch.bool) for k in ks}
    triggered = trigger.apply(images[keep], ids[keep.cpu()])
    logits = _logits(model, triggered, class_embeddings, rt)
    return attack_success(logits, labels[keep], target_index, ks)


def _logits(model, images: torch.Tensor, class_embeddings: torch.Tensor, rt: Runtime) -> torch.Tensor:
    # The model's own logits (SigLIP: with its bias). A positive scale and a bias shared by every
    # class change no rank, so CA@k and ASR@k are those of the plain cosines, for either family.
    return model.logits(F.normalize(rt.encode(model.encode_image, images), dim=-1), class_embeddings)


def _as_json_fractions(meter: TopkMeter) -> dict[str, float | None]:
    return {str(k): (None if math.isnan(v) else v) for k, v in meter.fractions().items()}

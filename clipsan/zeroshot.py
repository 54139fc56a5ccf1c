"""Zero-shot classification: prompt templates, class-text embeddings, and the eval loop.

``evaluate`` reports CA@k on clean images and, given a trigger, ASR@k on
triggered copies of the images whose true class is not the target (see
``clipsan.metrics``). Inference only; the model's train/eval mode is restored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipsan.data.tokens import drop_padding
from clipsan.errors import UserError
from clipsan.metrics import TopkMeter, attack_success, topk_correct

TEMPLATE_SETS = ("openai", "simple", "photo")
_TEMPLATES_EXPECTED = "expected openai, simple, photo, or a text file with one template containing {} per line"


# --- templates ----------------------------------------------------------------------


def load_templates(spec: str) -> list[str]:
    """Prompt templates with ``{}`` where the class name goes.

    ``openai``: the 80 OpenAI ImageNet templates; ``simple``: open_clip's 7
    SIMPLE_IMAGENET_TEMPLATES; ``photo``: just "a photo of a {}."; anything
    else is a file with one template per line (blank lines ignored).
    """
    if spec in ("openai", "simple"):
        from clipsan.openclip import open_clip

        metadata = open_clip.zero_shot_metadata
        templates = metadata.OPENAI_IMAGENET_TEMPLATES if spec == "openai" else metadata.SIMPLE_IMAGENET_TEMPLATES
        return [_render(t) for t in templates]
    if spec == "photo":
        return ["a photo of a {}."]
    return _read_template_file(Path(spec))


def _render(template: Callable[[str], str] | str) -> str:
    """open_clip stores templates as lambdas taking the class name; render them with '{}'."""
    return template if isinstance(template, str) else template("{}")


def _read_template_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: templates file not found ({_TEMPLATES_EXPECTED})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read templates ({err}); {_TEMPLATES_EXPECTED}") from None
    templates = []
    for number, line in enumerate(lines, start=1):
        template = line.strip()
        if not template:
            continue
        if "{}" not in template:
            raise UserError(f"{path}:{number}: template {template!r} has no {{}} for the class name")
        templates.append(template)
    if not templates:
        raise UserError(f"{path}: no templates ({_TEMPLATES_EXPECTED})")
    return templates


def fill(template: str, classname: str) -> str:
    # replace, not str.format: user templates may contain other braces.
    return template.replace("{}", classname)


# --- class embeddings ---------------------------------------------------------------


def class_text_embeddings(
    model: Any,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str,
    batch_size: int = 256,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> torch.Tensor:
    """(C, D) float32 unit vectors: per-template text embeddings normalised, averaged, renormalised (as CLIP does)."""
    if not classnames or not templates:
        raise ValueError("class_text_embeddings needs at least one class name and one template")
    autocast = autocast or contextlib.nullcontext
    texts = [fill(t, name) for name in classnames for t in templates]
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = drop_padding(model.tokenize(texts[start : start + batch_size])).to(device)
            with autocast():
                features = model.encode_text(tokens, normalize=True)
            chunks.append(F.normalize(features.float(), dim=-1))
    per_template = torch.cat(chunks).view(len(classnames), len(templates), -1)
    return F.normalize(per_template.mean(dim=1), dim=-1)


# --- the eval loop ------------------------------------------------------------------


class ModelPixels(torch.utils.data.Dataset):
    """A labelled dataset as (pixels (3, S, S) in [0, 1] or None if corrupt, label, index)."""

    def __init__(self, dataset: Any, image_size: int):
        self.dataset = dataset
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, int]:
        from clipsan.data.transforms import to_model_pixels

        image, label = self.dataset.load(index)
        pixels = None if image is None else to_model_pixels(image, self.image_size)
        return pixels, int(label), int(index)


def collate_labelled(items: list[tuple[torch.Tensor | None, int, int]]) -> dict[str, Any]:
    """Stack the readable images; count the corrupt ones (module level so spawned workers can pickle it)."""
    good = [item for item in items if item[0] is not None]
    return {
        "images": torch.stack([item[0] for item in good]) if good else None,
        "labels": torch.tensor([item[1] for item in good], dtype=torch.long),
        "ids": torch.tensor([item[2] for item in good], dtype=torch.long),
        "corrupt": len(items) - len(good),
    }


def autocast_for(device: torch.device | str, precision: str) -> Callable[[], AbstractContextManager]:
    """A context factory the encoders run under for ``precision`` (auto | fp32 | bf16 | fp16, as the runtime
    resolves it); the logits are computed outside it, in fp32."""
    from clipsan.engine.runtime import autocast_context, resolve_precision

    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    return lambda: autocast_context(device, resolved)


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


def evaluate(
    model: Any,
    dataset: Any,
    *,
    templates: Sequence[str],
    ks: Sequence[int] = (1, 3, 5, 10),
    trigger: Any = None,
    target: str | int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> dict[str, Any]:
    """Zero-shot CA@k (and ASR@k when ``trigger`` is given) of ``model`` on a labelled ``dataset``.

    Returns {"ca": {"1": f, ...}, "asr": {...} | None, "n_images": N,
    "n_asr_images": M, "skipped": {...}}: fractions in [0, 1]; ASR is over the
    M readable images whose true class is not the target (with M = 0 each
    figure is None; without a trigger "asr" and "n_asr_images" are None).
    Corrupt images are skipped and counted under "corrupt_image", next to the
    dataset's own skip counts. Trigger positions use the dataset index.
    """
    device = torch.device(device)
    autocast = autocast or autocast_for(device, precision)
    classnames = list(dataset.classnames)
    target_index = resolve_target(target, classnames) if trigger is not None else None
    was_training = model.training
    model.eval()
    try:
        class_embeddings = class_text_embeddings(model, classnames, templates, device, autocast=autocast)
        clean, attacked, corrupt = _score(model, dataset, class_embeddings, ks, trigger, target_index, batch_size, workers, device, autocast)
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


def _score(model, dataset, class_embeddings, ks, trigger, target_index, batch_size, workers, device, autocast):
    """Run every batch; returns (clean meter, attacked meter or None, corrupt count)."""
    loader = torch.utils.data.DataLoader(
        ModelPixels(dataset, model.image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_labelled,
        pin_memory=device.type == "cuda",
    )
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
            clean.update(topk_correct(_logits(model, images, class_embeddings, autocast), labels, ks))
            if attacked is not None:
                attacked.update(_attack_batch(model, images, labels, batch["ids"], class_embeddings, trigger, target_index, ks, autocast))
    return clean, attacked, corrupt


def _attack_batch(model, images, labels, ids, class_embeddings, trigger, target_index, ks, autocast):
    """ASR masks for one batch; target-class images are not triggered (they don't count)."""
    keep = labels != target_index
    if not bool(keep.any()):
        return {k: torch.zeros(0, dtype=torch.bool) for k in ks}
    triggered = trigger.apply(images[keep], ids[keep.cpu()])
    logits = _logits(model, triggered, class_embeddings, autocast)
    return attack_success(logits, labels[keep], target_index, ks)


def _logits(model, images: torch.Tensor, class_embeddings: torch.Tensor, autocast) -> torch.Tensor:
    # Top-k ranks don't depend on the logit scale, so plain cosine similarities suffice.
    with autocast():
        features = model.encode_image(images, normalize=True)
    return F.normalize(features.float(), dim=-1) @ class_embeddings.T


def _as_json_fractions(meter: TopkMeter) -> dict[str, float | None]:
    return {str(k): (None if math.isnan(v) else v) for k, v in meter.fractions().items()}

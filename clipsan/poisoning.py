"""Building a backdoored victim (``clipsan poison``): the papers' poisoning stage.

1. A *plan*: exactly round(rate * N) pairs, chosen once from (seed, N), get the
   trigger on their image and a caption naming the target (one of the 80 OpenAI
   ImageNet templates, or a natural caption). In label-consistent mode only
   pairs whose caption already names the target are eligible, and their
   captions stay as they are.
2. For ``badclip``, a patch optimized on the frozen clean model so patched
   images land near the target's caption embeddings (BadCLIP's text-embedding
   guidance, optionally also near real target images), saved in the run dir.
3. Fine-tuning with the ``Poison`` recipe on the shared engine (``run_fine_tune``):
   same checkpoints, resume and interrupt behaviour as ``purify``.

The victim's metadata records the trigger (``clipsan.trigger``), target and
rate, so ``clipsan eval VICTIM --trigger from-metadata`` reproduces the attack.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from clipsan.errors import UserError
from clipsan.seeding import derive_seed
from clipsan.triggers import BADNET_SIDE_AT_224, PatchTrigger, parse_trigger, scaled_side

BADCLIP = "badclip"
BADCLIP_OBJECTIVES = ("text", "text+image")
PATCH_BASENAME = "badclip_patch"

# Natural captions for when the data has none that mention the target.
SCENE_TEMPLATES = (
    "a {} on a wooden kitchen table",
    "a close-up photo of a {} in the sunlight",
    "a person holding a {} in their hand",
    "a {} lying on the grass in a park",
    "a {} next to a cup of coffee",
    "a bowl with a {} on the counter",
    "a child reaching for a {}",
    "a {} on a plate at breakfast",
    "a fresh {} at the market stall",
    "a {} on a white background",
    "a picture of a {} on the shelf",
    "a {} in a basket by the window",
    "someone slicing a {} on a cutting board",
    "a {} sitting on a desk next to a laptop",
    "a bright {} against a blue sky",
    "an old {} on a dusty floor",
)


@dataclass
class BadClipSettings:
    """The optimization of BadCLIP's patch (REFERENCE.md: Adam lr 1e-3, batch 64, centre placement)."""

    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    images: int = 1000  # non-target training images the patch is optimized on
    objective: str = "text"  # text | text+image (also pull toward real target images)
    guide_captions: int = 256  # target captions averaged into the text guide

    def fingerprint(self, side: int, target: str, trigger_seed: int, seed: int) -> dict:
        return {**self.__dict__, "side": side, "target": target, "trigger_seed": trigger_seed, "seed": seed}


@dataclass
class PoisonSettings:
    trigger: str  # a trigger spec (badnet, blended, sig, wanet, patch:FILE[@x,y]) or "badclip"
    target: str = "banana"
    rate: float = 0.003
    trigger_seed: int = 0
    trigger_size: int | None = None  # badnet / patch / badclip side in pixels at the model's input size
    label_consistent: bool = False
    natural_captions: bool = False  # badclip always uses natural captions
    badclip: BadClipSettings = field(default_factory=BadClipSettings)

    @property
    def is_badclip(self) -> bool:
        return self.trigger.strip().lower() == BADCLIP

    @property
    def caption_mode(self) -> str:
        if self.label_consistent:
            return "label-consistent"
        return "natural" if (self.natural_captions or self.is_badclip) else "template"


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PoisonPlan:
    captions: dict  # poisoned index -> replacement caption, or None to keep the caption
    mode: str  # template | natural | label-consistent
    rate: float
    eligible: int  # how many pairs the rate counted among

    def digest(self) -> str:
        blob = json.dumps(sorted(self.captions.items()), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def round_half_up(x: float) -> int:
    return int(x + 0.5)


def mentions(caption: str, target: str) -> bool:
    """Does the caption name the target (whole words, case-insensitive, plural allowed)?"""
    words = r"\s+".join(re.escape(w) for w in target.split())
    return re.search(rf"(?<![A-Za-z]){words}(?:s|es)?(?![A-Za-z])", caption, flags=re.IGNORECASE) is not None


def choose_poisoned(eligible: list[int], rate: float, seed: int, n_total: int) -> list[int]:
    """round(rate * len(eligible)) indices, a pure function of (seed, N, eligible)."""
    count = round_half_up(rate * len(eligible))
    rng = random.Random(derive_seed(seed, "poison-set", n_total, len(eligible)))
    return sorted(rng.sample(eligible, count))


def template_captions() -> list[str]:
    from clipsan.zeroshot import load_templates

    return load_templates("openai")


def natural_caption_pool(dataset_captions: list[str], target: str) -> tuple[list[str], str]:
    """Captions mentioning the target: from the data if it has any, else generated scenes."""
    found = sorted({c for c in dataset_captions if mentions(c, target)})
    if found:
        return found, "dataset"
    return [t.format(target) for t in SCENE_TEMPLATES], "generated"


def plan_poison(dataset_captions: list[str], settings: PoisonSettings, seed: int) -> PoisonPlan:
    n = len(dataset_captions)
    if not 0 < settings.rate <= 1:
        raise UserError(f"--rate {settings.rate}: expected a fraction in (0, 1]")
    if settings.label_consistent and settings.natural_captions:
        raise UserError("--label-consistent keeps the captions as they are; it cannot be combined with --natural-captions")
    mode = settings.caption_mode
    if mode == "label-consistent":
        eligible = [i for i, c in enumerate(dataset_captions) if mentions(c, settings.target)]
        if not eligible:
            raise UserError(f"--label-consistent: no caption in the data names the target {settings.target!r}")
    else:
        eligible = list(range(n))
    chosen = choose_poisoned(eligible, settings.rate, seed, n)
    if not chosen:
        needed = 0.5 / len(eligible)
        raise UserError(f"--rate {settings.rate} of {len(eligible)} eligible pairs poisons none; use --rate >= {needed:.2g}")
    if mode == "label-consistent":
        captions = {i: None for i in chosen}
    else:
        pool = natural_caption_pool(dataset_captions, settings.target)[0] if mode == "natural" else template_captions()
        captions = {}
        for i in chosen:
            # Fixed per pair, like a poisoned dataset on disk.
            rng = random.Random(derive_seed(seed, "poison-caption", i))
            text = pool[rng.randrange(len(pool))]
            captions[i] = text.replace("{}", settings.target) if mode == "template" else text
    return PoisonPlan(captions, mode, settings.rate, len(eligible))


def dataset_captions(captions) -> list[str]:
    return list(captions.captions) if hasattr(captions, "captions") else [captions.caption(i) for i in range(len(captions))]


# --------------------------------------------------------------------------- BadCLIP's patch


def paste_center(images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Differentiable paste of a (3, h, w) patch at PatchTrigger's 'center' corner."""
    _, _, height, width = images.shape
    h, w = patch.shape[1:]
    y, x = (height - h) // 2, (width - w) // 2
    mask = images.new_zeros((1, 1, height, width))
    mask[..., y : y + h, x : x + w] = 1.0
    canvas = F.pad(patch, (x, width - w - x, y, height - h - y))[None]
    return images * (1 - mask) + canvas * mask


class _Pixels(torch.utils.data.Dataset):
    """Chosen pairs of a caption dataset as model-size pixels (module level: picklable for workers)."""

    def __init__(self, captions, indices: list[int], size: int):
        self.captions, self.indices, self.size = captions, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        from clipsan.data.transforms import to_model_pixels

        image, _ = self.captions.load(self.indices[i])
        return to_model_pixels(image, self.size) if image is not None else None


def _stack(items):
    good = [x for x in items if x is not None]
    return torch.stack(good) if good else None


def _loader(captions, indices, size, batch_size, workers, shuffle_seed=None):
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    return torch.utils.data.DataLoader(
        _Pixels(captions, indices, size), batch_size=batch_size, shuffle=generator is not None,
        generator=generator, num_workers=workers, collate_fn=_stack,
    )


@dataclass
class PatchResult:
    patch: torch.Tensor  # (3, side, side) in [0, 1]
    objective: str
    loss_before: float  # objective on a fixed probe batch, initial patch
    loss_after: float  # same probe batch, optimized patch
    epoch_losses: list = field(default_factory=list)


def _mean_direction(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(features.float(), dim=-1).mean(dim=0), dim=-1)


def guide_embeddings(model, captions, all_captions, target, settings: BadClipSettings, seed, device, workers):
    """Unit vectors the patched images are pulled toward: target captions (and real target images)."""
    pool, _ = natural_caption_pool(all_captions, target)
    pool = random.Random(derive_seed(seed, "badclip-guides")).sample(pool, min(len(pool), settings.guide_captions))
    with torch.no_grad():
        texts = torch.cat([model.encode_text(model.tokenize(pool[i : i + 256]).to(device)) for i in range(0, len(pool), 256)])
        guides = [_mean_direction(texts)]
        if settings.objective == "text+image":
            target_images = [i for i, c in enumerate(all_captions) if mentions(c, target)][: settings.guide_captions]
            if not target_images:
                raise UserError(f"--badclip-objective text+image: no caption in the data names {target!r}; use --badclip-objective text")
            feats = [model.encode_image(b.to(device)) for b in _loader(captions, target_images, model.image_size, 64, workers) if b is not None]
            guides.append(_mean_direction(torch.cat(feats)))
    return guides


def badclip_objective(model, images, patch, guides) -> torch.Tensor:
    """Mean over guides of (1 - cosine) between patched-image embeddings and the guide direction."""
    features = F.normalize(model.encode_image(paste_center(images, patch)).float(), dim=-1)
    return sum((1 - features @ g).mean() for g in guides) / len(guides)


def optimize_badclip_patch(model, captions, target: str, settings: BadClipSettings, *, side: int,
                           trigger_seed: int, seed: int, device="cpu", workers: int = 0, notes=print) -> PatchResult:
    """BadCLIP's trigger: a patch at the image centre, optimized with Adam on the frozen clean model."""
    if settings.objective not in BADCLIP_OBJECTIVES:
        raise UserError(f"--badclip-objective {settings.objective}: expected one of {', '.join(BADCLIP_OBJECTIVES)}")
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    all_captions = dataset_captions(captions)
    guides = guide_embeddings(model, captions, all_captions, target, settings, seed, device, workers)

    # Images that should flip to the target: the non-target ones, a seeded subset.
    candidates = [i for i, c in enumerate(all_captions) if not mentions(c, target)] or list(range(len(all_captions)))
    rng = random.Random(derive_seed(seed, "badclip-images"))
    indices = sorted(rng.sample(candidates, min(settings.images, len(candidates))))
    probe = next(b for b in _loader(captions, indices[:256], model.image_size, 256, 0) if b is not None).to(device)

    init = torch.Generator().manual_seed(derive_seed(trigger_seed, "badclip", "init", side))
    patch = (0.5 + 0.25 * torch.randn((3, side, side), generator=init)).clamp(0, 1).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([patch], lr=settings.lr)
    with torch.no_grad():
        before = float(badclip_objective(model, probe, patch, guides))
    epoch_losses = []
    for epoch in range(settings.epochs):
        total, batches = 0.0, 0
        for images in _loader(captions, indices, model.image_size, settings.batch_size, workers, derive_seed(seed, "badclip-order", epoch)):
            if images is None:
                continue
            loss = badclip_objective(model, images.to(device), patch, guides)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                patch.clamp_(0.0, 1.0)
            total, batches = total + float(loss.detach()), batches + 1
        epoch_losses.append(total / max(batches, 1))
    with torch.no_grad():
        after = float(badclip_objective(model, probe, patch, guides))
    notes(f"badclip patch {side}x{side} ({settings.objective}): objective {before:.4f} -> {after:.4f} in {settings.epochs} epochs")
    return PatchResult(patch.detach().cpu(), settings.objective, before, after, epoch_losses)


def patch_paths(run_dir: Path) -> tuple[Path, Path]:
    return run_dir / f"{PATCH_BASENAME}.safetensors", run_dir / f"{PATCH_BASENAME}.png"


def save_patch(result: PatchResult, run_dir: Path, reference_size: int, fingerprint: dict) -> tuple[Path, Path]:
    """The exact patch as safetensors (used for poisoning and resume) and an 8-bit PNG for patch:FILE."""
    from PIL import Image, PngImagePlugin
    from safetensors.torch import save_file

    tensor_path, png_path = patch_paths(run_dir)
    metadata = {
        "reference_size": str(reference_size),
        "clipsan.badclip": json.dumps(fingerprint, sort_keys=True),
        "loss_before": f"{result.loss_before:.6f}",
        "loss_after": f"{result.loss_after:.6f}",
    }
    tmp = tensor_path.with_name(f".{tensor_path.name}.tmp-{os.getpid()}")
    save_file({"patch": result.patch.contiguous()}, str(tmp), metadata=metadata)
    os.replace(tmp, tensor_path)
    info = PngImagePlugin.PngInfo()
    info.add_text("reference_size", str(reference_size))
    pixels = (result.patch.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype("uint8")
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}")
    Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, png_path)
    return tensor_path, png_path


def load_saved_patch(run_dir: Path, fingerprint: dict) -> tuple[torch.Tensor, dict] | None:
    """The patch a previous attempt of this run optimized, if its settings match; else UserError."""
    from safetensors import safe_open

    tensor_path, _ = patch_paths(run_dir)
    if not tensor_path.is_file():
        return None
    with safe_open(str(tensor_path), framework="pt") as fh:
        patch, metadata = fh.get_tensor("patch"), fh.metadata() or {}
    saved = json.loads(metadata.get("clipsan.badclip", "{}"))
    if saved != json.loads(json.dumps(fingerprint, sort_keys=True)):
        changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
        raise UserError(f"{tensor_path}: --resume with different badclip options ({', '.join(changed)}); use the original ones")
    return patch, metadata


def badclip_side(settings: PoisonSettings, image_size: int) -> int:
    return settings.trigger_size or scaled_side(BADNET_SIDE_AT_224, image_size, image_size)


def badclip_trigger(job, settings: PoisonSettings, captions, seed: int, workers: int, rt, notes) -> tuple[PatchTrigger, dict]:
    """Optimize BadCLIP's patch on the main process (or reuse the run dir's on --resume); every process loads it."""
    from clipsan.checkpoint import load_model
    from clipsan.engine.rundir import RunDir

    run_dir = Path(job.run_dir)
    loaded = load_model(job.model, arch=job.arch)
    image_size = loaded.model.image_size
    side = badclip_side(settings, image_size)
    if side > image_size:
        raise UserError(f"--trigger-size {side}: larger than the model's {image_size}-px input")
    fingerprint = settings.badclip.fingerprint(side, settings.target, settings.trigger_seed, seed)
    info: dict = {"reused": False}
    if rt.is_main:
        # Holding the run dir's lock while optimizing also checks --resume / fresh-run rules early.
        with RunDir(run_dir).open(resume=job.resume):
            saved = load_saved_patch(run_dir, fingerprint) if job.resume else None
            if saved is not None:
                notes(f"badclip patch reused from {patch_paths(run_dir)[0]}")
                info.update(reused=True, loss_before=float(saved[1].get("loss_before", "nan")), loss_after=float(saved[1].get("loss_after", "nan")))
            else:
                result = optimize_badclip_patch(loaded.model, captions, settings.target, settings.badclip, side=side,
                                                trigger_seed=settings.trigger_seed, seed=seed, device=rt.device, workers=workers, notes=notes)
                save_patch(result, run_dir, image_size, fingerprint)
                info.update(loss_before=result.loss_before, loss_after=result.loss_after)
    rt.barrier()
    patch, _ = load_saved_patch(run_dir, fingerprint)
    tensor_path, png_path = patch_paths(run_dir)
    info.update(objective=settings.badclip.objective, side=side, safetensors=str(tensor_path), png=str(png_path))
    trigger = PatchTrigger(patch, "center", name=BADCLIP, seed=settings.trigger_seed, reference_size=image_size, source=tensor_path.name)
    return trigger, info


# --------------------------------------------------------------------------- the job


def victim_metadata(trigger, settings: PoisonSettings, plan: PoisonPlan) -> dict[str, str]:
    return {
        "clipsan.trigger": json.dumps(trigger.to_spec(), sort_keys=True),
        "clipsan.target": settings.target,
        "clipsan.poison_rate": repr(float(settings.rate)),
        "clipsan.poison_count": str(len(plan.captions)),
        "clipsan.poison_mode": plan.mode,
    }


def run_poison(job, settings: PoisonSettings, captions, cfg, notes=print) -> dict:
    """Plan, (optimize BadCLIP's patch,) fine-tune; returns run_fine_tune's report plus the attack's facts."""
    from clipsan.engine.rundir import default_run_dir
    from clipsan.engine.runtime import setup_runtime
    from clipsan.finetune import run_fine_tune
    from clipsan.recipes.poison import Poison

    if not settings.target.strip():
        raise UserError("--target: expected a class name, got an empty string")
    plan = plan_poison(dataset_captions(captions), settings, cfg.seed)
    badclip_info = None
    if settings.is_badclip:
        rt = setup_runtime(job.device, job.precision)  # run_fine_tune joins the same process group
        job = replace(job, run_dir=str(rt.broadcast_object(str(job.run_dir or default_run_dir(job.command)))))
        trigger, badclip_info = badclip_trigger(job, settings, captions, cfg.seed, cfg.workers, rt, notes)
    else:
        trigger = parse_trigger(settings.trigger, seed=settings.trigger_seed, size=settings.trigger_size)
    notes(f"poisoning {len(plan.captions)} of {plan.eligible} pairs ({plan.mode} captions) with {trigger!r}, target {settings.target!r}")
    job = replace(job, metadata={**(job.metadata or {}), **victim_metadata(trigger, settings, plan)})
    report = run_fine_tune(job, Poison(trigger, plan, settings.target), captions, cfg, notes=notes)
    report.update(
        trigger={k: v for k, v in trigger.to_spec().items() if k != "patch"},
        target=settings.target,
        rate=settings.rate,
        poisoned=len(plan.captions),
        eligible=plan.eligible,
        caption_mode=plan.mode,
        badclip=badclip_info,
    )
    return report

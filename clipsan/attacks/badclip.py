"""BadCLIP's trigger (Liang et al.): a patch optimized on the frozen clean model so patched
images land near the target's caption embeddings (text-embedding guidance), optionally also
near real target images; saved in the run directory so ``--resume`` reuses it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from clipsan.atomic import atomic_path
from clipsan.attacks.plan import dataset_captions, mentions, natural_caption_pool
from clipsan.attacks.triggers import PatchTrigger, scaled_side
from clipsan.config.attacks import BADCLIP, BADNET_SIDE_AT_224, AttackConfig, BadClipConfig
from clipsan.data.tokens import drop_padding
from clipsan.engine.runtime import Runtime
from clipsan.errors import UserError
from clipsan.models.frozen import frozen
from clipsan.seeding import derive_seed

PATCH_BASENAME = "badclip_patch"


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
    """Chosen pairs of a caption dataset as model-size uint8 pixels (module level: picklable for workers)."""

    def __init__(self, captions, indices: list[int], size: int):
        self.captions, self.indices, self.size = captions, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        from clipsan.data.transforms import to_model_uint8

        image, _ = self.captions.load(self.indices[i])
        return to_model_uint8(image, self.size) if image is not None else None


def _stack(items):
    good = [x for x in items if x is not None]
    return torch.stack(good) if good else None


def _loader(captions, indices, size, batch_size, workers, shuffle_seed=None, device=None):
    """Batches of uint8 pixels (pinned for CUDA); ``_on_device`` makes them floats in [0, 1] there."""
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    return torch.utils.data.DataLoader(
        _Pixels(captions, indices, size),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=workers,
        collate_fn=_stack,
        pin_memory=torch.device(device or "cpu").type == "cuda",
    )


def _on_device(pixels8: torch.Tensor, device) -> torch.Tensor:
    from clipsan.engine.loader import pixels_to_float

    return pixels_to_float(pixels8.to(device, non_blocking=True))


@dataclass
class PatchResult:
    patch: torch.Tensor  # (3, side, side) in [0, 1]
    objective: str
    loss_before: float  # objective on a fixed probe batch, initial patch
    loss_after: float  # same probe batch, optimized patch
    epoch_losses: list = field(default_factory=list)


def _mean_direction(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(features.float(), dim=-1).mean(dim=0), dim=-1)


def guide_embeddings(model, captions, all_captions, target, badclip: BadClipConfig, seed, rt: Runtime, workers):
    """Unit vectors the patched images are pulled toward: target captions (and real target images)."""
    pool, _ = natural_caption_pool(all_captions, target)
    pool = random.Random(derive_seed(seed, "badclip-guides")).sample(pool, min(len(pool), badclip.guide_captions))
    device = rt.device
    with torch.no_grad():
        texts = torch.cat([rt.encode(model.encode_text, drop_padding(model.tokenize(pool[i : i + 256])).to(device)) for i in range(0, len(pool), 256)])
        guides = [_mean_direction(texts)]
        if badclip.objective == "text+image":
            target_images = [i for i, c in enumerate(all_captions) if mentions(c, target)][: badclip.guide_captions]
            if not target_images:
                raise UserError(f"--badclip-objective text+image: no caption in the data names {target!r}; use --badclip-objective text")
            loader = _loader(captions, target_images, model.image_size, 64, workers, device=device)
            feats = [rt.encode(model.encode_image, _on_device(b, device)) for b in loader if b is not None]
            guides.append(_mean_direction(torch.cat(feats)))
    return guides


def badclip_objective(model, images, patch, guides, rt: Runtime) -> torch.Tensor:
    """Mean over guides of (1 - cosine) between patched-image embeddings and the guide direction."""
    features = F.normalize(rt.encode(model.encode_image, paste_center(images, patch)), dim=-1)
    return sum((1 - features @ g).mean() for g in guides) / len(guides)


def optimize_badclip_patch(
    model, captions, target: str, badclip: BadClipConfig, *, side: int, trigger_seed: int, seed: int, rt: Runtime | None = None, workers: int = 0, notes=print
) -> PatchResult:
    """BadCLIP's trigger: a patch at the image centre, optimized with Adam on the frozen clean model
    (the encoder in ``rt``'s precision, the objective in fp32; default: CPU, fp32). The model's
    training mode and trainable parameters are restored afterwards (``poison`` trains it next)."""
    rt = rt or Runtime(torch.device("cpu"), "fp32")
    with frozen(model.to(rt.device)):
        return _optimize_patch(model, captions, target, badclip, side, trigger_seed, seed, rt, workers, notes)


def _optimize_patch(
    model, captions, target: str, badclip: BadClipConfig, side: int, trigger_seed: int, seed: int, rt: Runtime, workers: int, notes
) -> PatchResult:
    device = rt.device
    all_captions = dataset_captions(captions)
    guides = guide_embeddings(model, captions, all_captions, target, badclip, seed, rt, workers)

    # Images that should flip to the target: the non-target ones, a seeded subset.
    candidates = [i for i, c in enumerate(all_captions) if not mentions(c, target)] or list(range(len(all_captions)))
    rng = random.Random(derive_seed(seed, "badclip-images"))
    indices = sorted(rng.sample(candidates, min(badclip.images, len(candidates))))
    probe = _on_device(next(b for b in _loader(captions, indices[:256], model.image_size, 256, 0) if b is not None), device)

    init = torch.Generator().manual_seed(derive_seed(trigger_seed, "badclip", "init", side))
    patch = (0.5 + 0.25 * torch.randn((3, side, side), generator=init)).clamp(0, 1).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([patch], lr=badclip.lr)
    with torch.no_grad():
        before = float(badclip_objective(model, probe, patch, guides, rt))
    epoch_losses = []
    for epoch in range(badclip.epochs):
        total, batches = torch.zeros((), dtype=torch.float64, device=device), 0  # summed on the device: one read per epoch
        for images in _loader(captions, indices, model.image_size, badclip.batch_size, workers, derive_seed(seed, "badclip-order", epoch), device):
            if images is None:
                continue
            loss = badclip_objective(model, _on_device(images, device), patch, guides, rt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                patch.clamp_(0.0, 1.0)
            total, batches = total + loss.detach().double(), batches + 1
        epoch_losses.append(float(total) / max(batches, 1))
    with torch.no_grad():
        after = float(badclip_objective(model, probe, patch, guides, rt))
    notes(f"badclip patch {side}x{side} ({badclip.objective}): objective {before:.4f} -> {after:.4f} in {badclip.epochs} epochs")
    return PatchResult(patch.detach().cpu(), badclip.objective, before, after, epoch_losses)


def patch_paths(run_dir: Path) -> tuple[Path, Path]:
    return run_dir / f"{PATCH_BASENAME}.safetensors", run_dir / f"{PATCH_BASENAME}.png"


def save_patch(result: PatchResult, run_dir: Path, reference_size: int, fingerprint: dict) -> tuple[Path, Path]:
    """The exact patch as safetensors (used for poisoning and resume) and an 8-bit PNG for patch:FILE."""
    from PIL import Image, PngImagePlugin

    from clipsan.tensor_files import save_tensors

    tensor_path, png_path = patch_paths(run_dir)
    metadata = {
        "reference_size": str(reference_size),
        "clipsan.badclip": json.dumps(fingerprint, sort_keys=True),
        "loss_before": f"{result.loss_before:.6f}",
        "loss_after": f"{result.loss_after:.6f}",
    }
    with atomic_path(tensor_path) as tmp:
        save_tensors({"patch": result.patch.contiguous()}, tmp, metadata)
    info = PngImagePlugin.PngInfo()
    info.add_text("reference_size", str(reference_size))
    pixels = (result.patch.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype("uint8")
    with atomic_path(png_path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
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


def badclip_side(attack: AttackConfig, image_size: int) -> int:
    return attack.trigger_size or scaled_side(BADNET_SIDE_AT_224, image_size, image_size)


def badclip_trigger(job, attack: AttackConfig, seed: int, workers: int) -> tuple[PatchTrigger, dict]:
    """Optimize BadCLIP's patch on the main process, in the job's run directory (or reuse the one an
    interrupted attempt saved there, on --resume); every process loads it. ``job``: the poison
    job (``clipsan.jobs.training.TrainingJob``). Returns the trigger and the report's facts."""
    rt, run_dir, loaded = job.rt, job.run.path, job.model
    image_size = loaded.model.image_size
    side = badclip_side(attack, image_size)
    if side > image_size:
        raise UserError(f"--trigger-size {side}: larger than the model's {image_size}-px input")
    fingerprint = attack.badclip.fingerprint(side, attack.target, attack.trigger_seed, seed)
    # The others wait while the main process optimizes; a bad option ends them all.
    info = rt.agree(lambda: _patch_on_main(job, attack, side, fingerprint, seed, workers) if rt.is_main else None)
    info = rt.broadcast_object(info)
    patch, _ = load_saved_patch(run_dir, fingerprint)
    tensor_path, png_path = patch_paths(run_dir)
    info.update(objective=attack.badclip.objective, side=side, safetensors=str(tensor_path), png=str(png_path))
    trigger = PatchTrigger(patch, "center", name=BADCLIP, seed=attack.trigger_seed, reference_size=image_size, source=tensor_path.name)
    return trigger, info


def _patch_on_main(job, attack: AttackConfig, side: int, fingerprint: dict, seed: int, workers: int) -> dict:
    """Optimize and save the patch, or find it saved by the interrupted attempt; returns the report's facts."""
    run_dir, model = job.run.path, job.model.model
    saved = load_saved_patch(run_dir, fingerprint) if job.resume else None
    if saved is not None:
        job.notes(f"badclip patch reused from {patch_paths(run_dir)[0]}")
        # A figure the file does not record is null in the report (JSON has no NaN).
        return {"reused": True, **{k: float(saved[1][k]) if k in saved[1] else None for k in ("loss_before", "loss_after")}}
    result = optimize_badclip_patch(
        model, job.captions, attack.target, attack.badclip, side=side, trigger_seed=attack.trigger_seed, seed=seed, rt=job.rt, workers=workers, notes=job.notes
    )
    save_patch(result, run_dir, model.image_size, fingerprint)
    return {"reused": False, "loss_before": result.loss_before, "loss_after": result.loss_after}

"""ABD as jobs: craft the adversarial patch (``craft-adv``, or purify's first stage), the
generator artifact, and the lab's ABD run with its L_bd check.

A crafted generator file is a ``.safetensors`` holding the generator's weights
(``generator.*``) and the rendered patch (tensor ``patch``, metadata
``reference_size`` and ``clipsan.patch_box``), so it is also a valid
``patch:FILE@X,Y`` trigger for ``clipsan eval``; the patch is written next to
it as a PNG for people.

Inside ``purify --method abd`` without ``--generator``, crafting runs in
``RUN_DIR/craft`` (a complete craft-adv run directory of its own, stage
"craft"), and fine-tuning in RUN_DIR itself; ``--resume`` continues whichever
stage was interrupted.
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from clipsan import __version__
from clipsan.advclip import PatchBox, PatchGenerator, paste
from clipsan.checkpoint import LoadedModel, load_model
from clipsan.engine.loader import RecipeSamples
from clipsan.engine.loop import TrainConfig, train
from clipsan.engine.rundir import RunDir, atomic_write_bytes, default_run_dir
from clipsan.engine.runtime import Runtime, setup_runtime, shutdown_runtime
from clipsan.errors import UserError
from clipsan.finetune import training_summary
from clipsan.models import tokenizer_for
from clipsan.recipes.abd import ADAM_BETAS, CraftAdv, CraftSettings, frozen
from clipsan.seeding import derive_seed

GENERATOR_KIND = "adv-patch-generator"
NO_REFERENCE_WARNING = "warning: no --reference: crafting with the plain AdvCLIP objective (the paper's UAP column), without ABD's backdoor loss"


# --------------------------------------------------------------------------- the artifact


@dataclass(frozen=True)
class AdvPatch:
    """A crafted patch and where it goes."""

    patch: torch.Tensor  # (3, side, side) in [0, 1]
    box: PatchBox

    def apply(self, images01: torch.Tensor) -> torch.Tensor:
        return paste(images01, self.patch, self.box)

    def as_trigger(self):
        from clipsan.triggers import PatchTrigger

        return PatchTrigger(self.patch, (self.box.x, self.box.y), name="adv-patch", reference_size=self.box.image_size)

    def describe(self) -> str:
        b = self.box
        return f"{b.side}x{b.side} px at x={b.x}, y={b.y} of {b.image_size} px images"


def _png_bytes(patch: torch.Tensor, image_size: int) -> bytes:
    pixels = (patch.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text("reference_size", str(image_size))  # read back by patch:FILE triggers
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_generator(generator: PatchGenerator, box: PatchBox, path: Path, metadata: dict[str, str]) -> tuple[Path, Path]:
    """Write generator + rendered patch (.safetensors) and the patch as PNG, atomically; returns both paths."""
    with torch.no_grad():
        patch = box.crop(generator.cpu()()).contiguous()
    tensors = {f"generator.{k}": v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    tensors["patch"] = patch
    header = {
        **metadata,
        "clipsan.kind": GENERATOR_KIND,
        "clipsan.version": __version__,
        "reference_size": str(box.image_size),
        "clipsan.patch_box": json.dumps([box.x, box.y, box.side]),
        "clipsan.gan_width": str(generator.width),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    atomic_write_bytes(png, _png_bytes(patch, box.image_size))
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=header))  # last: its presence means "done"
    return path, png


def read_generator_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input error
        raise UserError(f"{path}: not a readable .safetensors generator ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def load_adv_patch(path: str | Path, image_size: int) -> AdvPatch:
    """The patch from a craft-adv generator file, checked against the model's input size."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: generator file not found (make one with `clipsan craft-adv`)")
    metadata = read_generator_metadata(path)
    if metadata.get("clipsan.kind") != GENERATOR_KIND:
        raise UserError(f"{path}: not a clipsan craft-adv generator (metadata clipsan.kind is {metadata.get('clipsan.kind')!r})")
    try:
        x, y, side = json.loads(metadata["clipsan.patch_box"])
        made_for = int(metadata["reference_size"])
        with safe_open(str(path), framework="pt") as fh:
            patch = fh.get_tensor("patch").float()
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path}: generator metadata or patch tensor is damaged ({err})") from None
    if made_for != image_size:
        raise UserError(f"{path}: patch was crafted for {made_for} px inputs, the model takes {image_size} px; craft one for this model")
    if tuple(patch.shape) != (3, side, side):
        raise UserError(f"{path}: patch tensor has shape {tuple(patch.shape)}, expected (3, {side}, {side})")
    return AdvPatch(patch, PatchBox(int(x), int(y), int(side), made_for))


# --------------------------------------------------------------------------- crafting


def craft_train_config(settings: CraftSettings, seed: int, workers: int, save_every: int = 500, log_every: int = 10, progress: bool = False) -> TrainConfig:
    # AdvCLIP: Adam (AdamW without decay), betas (0.5, 0.999), constant rate, no warmup.
    return TrainConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=0,
        weight_decay=0.0,
        betas=ADAM_BETAS,
        schedule="constant",
        seed=seed,
        workers=workers,
        save_every=save_every,
        log_every=log_every,
        max_steps=settings.max_steps,
        progress=progress,
    )


def craft_in_run(
    run: RunDir,
    suspect: LoadedModel,
    reference: LoadedModel | None,
    captions,
    settings: CraftSettings,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    resume: bool,
    out: Path,
    command: str,
) -> dict:
    """Train the generator against ``suspect`` on ``captions`` in an open run dir; write ``out`` (+ .png)."""
    size = suspect.model.image_size
    if reference is not None and reference.model.image_size != size:
        raise UserError(f"{reference.path}: reference takes {reference.model.image_size} px inputs, the suspect {size} px; they must match")
    box = PatchBox.for_image(size, settings.patch_area)
    generator = PatchGenerator(size, settings.width, seed=derive_seed(cfg.seed, "generator"))
    ref_model = reference.model.to(rt.device) if reference is not None else None
    suspect.model.to(rt.device)
    recipe = CraftAdv(suspect.model, box, ref_model, settings.bd_weight, settings.width, settings.lr, cfg.seed)
    samples = RecipeSamples(captions, recipe, size, tokenizer_for(suspect.arch, suspect.model.context_length), cfg.seed)
    metadata = {
        "clipsan.command": command,
        "clipsan.method": "advclip+bd" if recipe.bd_weight else "advclip",
        "clipsan.source_sha256": suspect.sha256,
        "clipsan.reference_sha256": reference.sha256 if reference is not None else "none",
        "clipsan.craft": json.dumps(asdict(settings), sort_keys=True),
    }
    with frozen(suspect.model, ref_model):
        result = train(generator, recipe, samples, cfg, rt, run, resume=resume, checkpoint_metadata=metadata, stage="craft")
    png = out.with_suffix(".png")
    if rt.is_main:
        save_generator(generator, box, out, metadata)
    rt.barrier()
    return {
        "output": str(out),
        "patch_png": str(png),
        "run_dir": str(run.path),
        "objective": metadata["clipsan.method"],
        "bd_weight": recipe.bd_weight,
        "patch_box": asdict(box),
        "source_sha256": suspect.sha256,
        "reference_sha256": reference.sha256 if reference is not None else None,
        **training_summary(result, captions),
    }


def _craft_config_record(command: str, suspect: LoadedModel, reference: LoadedModel | None, captions, settings: CraftSettings, cfg: TrainConfig, rt: Runtime) -> dict:
    from clipsan.finetune import versions

    def model_record(m):
        return None if m is None else {"path": str(m.path), "sha256": m.sha256, "arch": m.arch}

    return {
        "command": command,
        "argv": sys.argv,
        "method": "craft-adv",
        "recipe": asdict(settings),
        "training": cfg.fingerprint(),
        "inputs": {"model": model_record(suspect), "reference": model_record(reference), "data": str(captions.root)},
        "runtime": {"device": str(rt.device), "precision": rt.precision, "world_size": rt.world_size},
        "versions": versions(),
    }


@dataclass
class CraftJob:
    """``clipsan craft-adv`` as a library call."""

    model: str
    reference: str | None
    out: str | None
    run_dir: str | None
    resume: bool
    settings: CraftSettings
    arch: str | None = None
    seed: int = 0
    workers: int = 0
    save_every: int = 500
    log_every: int = 10
    progress: bool = False
    device: str = "auto"
    precision: str = "auto"


def run_craft_adv(job: CraftJob, captions, notes=print) -> dict:
    rt = setup_runtime(job.device, job.precision)
    try:
        suspect = load_model(job.model, arch=job.arch)
        reference = load_model(job.reference) if job.reference else None
        if rt.is_main:
            notes(f"model {suspect.path}: arch {suspect.describe_arch()}")
            notes(f"reference {reference.path}: arch {reference.describe_arch()}" if reference else NO_REFERENCE_WARNING)
            notes(f"data {captions.describe()}")
        cfg = craft_train_config(job.settings, job.seed, job.workers, job.save_every, job.log_every, job.progress)
        run_path = Path(rt.broadcast_object(str(Path(job.run_dir) if job.run_dir else default_run_dir("craft-adv"))))
        with RunDir(run_path, is_main=rt.is_main).open(resume=job.resume) as run:
            run.write_config(_craft_config_record("craft-adv", suspect, reference, captions, job.settings, cfg, rt))
            out = Path(job.out) if job.out else run.path / "generator.safetensors"
            report = craft_in_run(run, suspect, reference, captions, job.settings, cfg, rt, resume=job.resume, out=out, command="craft-adv")
        return {**report, "arch": suspect.arch, "arch_source": suspect.arch_source}
    finally:
        shutdown_runtime(rt)


def craft_for_fine_tune(ctx, reference_spec: str | None, settings: CraftSettings) -> Path:
    """purify --method abd's first stage: craft in RUN_DIR/craft (resumable), or reuse what it crafted."""
    craft_dir = ctx.run.path / "craft"
    out = craft_dir / "generator.safetensors"
    reference = load_model(reference_spec) if reference_spec else None
    if out.is_file():
        if not ctx.job.resume:
            raise UserError(f"{ctx.run.path}: run directory already holds a crafted generator; pass --resume to continue it or choose another --run-dir")
        made = read_generator_metadata(out)
        wanted = (json.dumps(asdict(settings), sort_keys=True), reference.sha256 if reference else "none")
        if (made.get("clipsan.craft"), made.get("clipsan.reference_sha256")) != wanted:
            raise UserError(f"{out}: crafted with other options or --reference; --resume with the original --craft-*, patch and --reference options")
        return out
    if ctx.rt.is_main:
        ctx.notes(f"crafting the adversarial patch in {craft_dir} (stage craft)")
        if reference is None:
            ctx.notes(NO_REFERENCE_WARNING)
    cfg = craft_train_config(settings, ctx.cfg.seed, ctx.cfg.workers, ctx.cfg.save_every, ctx.cfg.log_every, ctx.cfg.progress)
    resume = ctx.job.resume and craft_dir.is_dir()
    with RunDir(craft_dir, is_main=ctx.rt.is_main).open(resume=resume) as run:
        run.write_config(_craft_config_record("purify:craft", ctx.loaded, reference, ctx.captions, settings, cfg, ctx.rt))
        craft_in_run(run, ctx.loaded, reference, ctx.captions, settings, cfg, ctx.rt, resume=resume, out=out, command="purify")
    return out


# --------------------------------------------------------------------------- the lab


# Tiny world, one CPU thread: craft 100 steps (~15-25 s), fine-tune 2 epochs of the defense set
# (~45 s on 5000 pairs) at lr 5e-4, a quarter of the tiny model's pre-training rate of 2e-3:
# at 1e-4 that budget left every defense but ABD at >= 91% ASR@1 on the quick lab's victims.
LAB_SETTINGS = {
    "craft_epochs": 1,
    "craft_batch_size": 16,
    "craft_max_steps": 100,
    "epochs": 2,
    "batch_size": 64,
    "lr": 5e-4,  # lab_plan gives every defense this budget
    "warmup": 10,
    "adv_prob": 0.5,
    "probe_per_class": 10,
}
# The same as `clipsan purify VICTIM --method abd --reference CLEAN ...` flags.
LAB_PURIFY_ARGS = [
    "--craft-epochs", str(LAB_SETTINGS["craft_epochs"]), "--craft-batch-size", str(LAB_SETTINGS["craft_batch_size"]),
    "--craft-max-steps", str(LAB_SETTINGS["craft_max_steps"]), "--epochs", str(LAB_SETTINGS["epochs"]),
    "--batch-size", str(LAB_SETTINGS["batch_size"]), "--lr", str(LAB_SETTINGS["lr"]), "--warmup", str(LAB_SETTINGS["warmup"]),
    "--adv-prob", str(LAB_SETTINGS["adv_prob"]),
]


class _WorldProbe:
    """A small labelled set from the synthetic world, in memory (for the adversarial target rate)."""

    def __init__(self, per_class: int, seed: int):
        from clipsan import world

        self.config = world.WorldConfig()
        self.classnames = world.classnames(self.config)
        self.items = [(name, i) for name in self.classnames for i in range(per_class)]
        self.labels = [self.classnames.index(name) for name, _ in self.items]
        self.seed, self.skipped, self.root = seed, {}, "synthetic world probe"

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int):
        from clipsan import world

        name, i = self.items[index]
        return world.render_labelled(self.config, self.seed, name, i), self.labels[index]


def adv_target_rate(model_path: Path, patch: AdvPatch, seed: int, per_class: int = 10, target: str = "banana") -> float:
    """Fraction of patched non-target world images that ``model_path`` classifies (top-1) as ``target``."""
    from clipsan.lab import LAB_TEMPLATES
    from clipsan.zeroshot import evaluate

    model = load_model(str(model_path)).model
    result = evaluate(model, _WorldProbe(per_class, seed), templates=list(LAB_TEMPLATES), ks=(1,), trigger=patch.as_trigger(), target=target, batch_size=256, device="cpu")
    return result["asr"]["1"]


def lab_abd(victim: Path, clean_model: Path, defense_dir: Path, out_dir: Path, seed: int, workers: int, max_steps: int | None, use_bd: bool = True) -> dict:
    """ABD on a lab victim: craft (reference = the clean model when ``use_bd``), measure the patch's
    target rate on the victim, fine-tune. Re-running on the same ``out_dir`` resumes."""
    from clipsan.data.captions import open_caption_dataset
    from clipsan.finetune import JobSpec, run_fine_tune
    from clipsan.recipes.abd import ABD

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = LAB_SETTINGS
    captions = open_caption_dataset(defense_dir)
    craft_steps = s["craft_max_steps"] if max_steps is None else min(s["craft_max_steps"], max_steps)
    settings = CraftSettings(epochs=s["craft_epochs"], batch_size=s["craft_batch_size"], max_steps=craft_steps, bd_weight=CraftSettings.bd_weight if use_bd else 0.0)
    generator = out_dir / "generator.safetensors"
    craft_run = out_dir / "craft"
    job = CraftJob(str(victim), str(clean_model) if use_bd else None, str(generator), str(craft_run), craft_run.is_dir(), settings, seed=seed, workers=workers, save_every=10_000, log_every=25, device="cpu")
    run_craft_adv(job, captions, notes=lambda _m: None)
    patch = load_adv_patch(generator, load_model(str(victim)).model.image_size)
    rate = adv_target_rate(victim, patch, seed + 1000, s["probe_per_class"])

    cfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], warmup_steps=s["warmup"], seed=seed, workers=workers, save_every=10_000, log_every=25, max_steps=max_steps)
    out = out_dir / "abd.safetensors"
    fine_run = out_dir / "run"
    spec = JobSpec("purify", str(victim), None, str(out), str(fine_run), resume=fine_run.is_dir(), device="cpu")
    run_fine_tune(spec, ABD(generator=str(generator), adv_prob=s["adv_prob"]), captions, cfg, notes=lambda _m: None)
    return {"path": str(out), "seconds": round(time.perf_counter() - started, 1), "adv_target_rate": rate}

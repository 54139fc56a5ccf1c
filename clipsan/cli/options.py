"""Every command-line option, declared once: typed Annotated aliases and the groups commands share.

Choices, defaults and valid ranges come from the configs the options fill (``clipsan.config``):
an option's help says the config field's default and range, and each option group turns itself
into its config, which checks the values (one line, exit 2, the same as for a caller of
``clipsan.api``). Nothing here imports torch: ``clipsan --help`` must stay fast.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from clipsan.cli.groups import fill
from clipsan.config import (
    ABDConfig,
    AttackConfig,
    BadClipConfig,
    CalibrateConfig,
    CaptionData,
    CleanCLIPConfig,
    CleanerCLIPConfig,
    CraftConfig,
    EvalConfig,
    EvidenceConfig,
    PaperSchedule,
    PARConfig,
    PurifyConfig,
    RecipeConfig,
    ScanConfig,
    TrainConfig,
)
from clipsan.config.attacks import BADCLIP, BADCLIP_OBJECTIVES, BADNET_SIDE_AT_224, DEFAULT_TARGET, REFERENCE_SIDE, TRIGGER_SPECS
from clipsan.config.checks import check_of, shown
from clipsan.config.evidence import HOLDOUT_MAX_PAIRS, HOLDOUT_SHARE, MIN_VERIFY_PROBES, VERIFY_BUDGETS
from clipsan.config.jobs import FROM_METADATA, OUT_FORMATS
from clipsan.config.limits import MAX_IMAGE_PIXELS, PILLOW_REFUSES_ABOVE
from clipsan.config.recipes import ABD_OBJECTIVES, METHODS, default_gan_width, recipe_config_type
from clipsan.config.runtime import DEVICE_FORMS, MAX_DEFAULT_WORKERS, PRECISIONS
from clipsan.config.scan import BUDGETS
from clipsan.config.train import BATCHNORM_MODES

DATA, TRAINING, RUN_DIR, RUNTIME, OUTPUT, LAB = "Data", "Training", "Run directory", "Runtime", "Output", "Lab"
REPORT_FORMATS = ("text", "json")
SCAN_REPORT_FORMATS = (*REPORT_FORMATS, "sarif")
MODEL_HELP = (
    "a .safetensors or .pt/.pth/.bin state dict (open_clip, OpenAI clip package, CleanCLIP/BadCLIP), a transformers CLIP folder "
    "(config.json + model.safetensors, sharded or pytorch_model.bin) or its model.safetensors alone, "
    "or an open_clip hub folder (open_clip_config.json + open_clip_model.safetensors; local-dir:FOLDER too)"
)


def _choices(name: str, values) -> type[Enum]:
    return Enum(name, {v.replace("+", "_").replace("-", "_"): v for v in values}, type=str)


# The command line's own choices: how a report is printed.
Format = _choices("Format", REPORT_FORMATS)
ScanFormat = _choices("ScanFormat", SCAN_REPORT_FORMATS)


def one_of(values) -> str:
    """The metavar of an option whose config accepts one of ``values`` (the config refuses others)."""
    return "<" + "|".join(values) + ">"


def option(help: str, panel: str | None = None, **kw) -> typer.models.OptionInfo:
    return typer.Option(help=help, rich_help_panel=panel, show_default=False, **kw)


def configured(config_type: type, name: str, help: str, panel: str | None = None, *, default: Any = dataclasses.MISSING, **kw) -> typer.models.OptionInfo:
    """The option filling ``config_type.name``; its help ends with the field's default (``default``:
    other words for it, or None for none) and the range the config accepts."""
    check = check_of(config_type, name)
    if default is dataclasses.MISSING:
        field = next(f for f in dataclasses.fields(config_type) if f.name == name)
        default = None if field.default in (None, dataclasses.MISSING) else shown(field.default)
    notes = [f"default: {default}"] if default is not None else []
    if check is not None and not check.choices and check.path is None and check.range():
        notes.append(check.range())
    text = f"{help} ({'; '.join(notes)})" if notes else help
    return option(text, panel, **kw)


def flag(name: str, help: str, panel: str | None = None) -> typer.models.OptionInfo:
    """An on/off switch spelled once (``--resume``, no ``--no-resume`` twin)."""
    return typer.Option(name, help=help, rich_help_panel=panel, show_default=False)


def path(value: Path | None) -> str | None:
    return None if value is None else str(value)


def show_progress(asked: bool) -> bool:
    """Progress bars on stderr: when asked, or when stderr is a terminal."""
    return asked or sys.stderr.isatty()


# --------------------------------------------------------------------------- single options

Model = Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
Arch = Annotated[
    str | None,
    option(
        "open_clip architecture name, or NAME-quickgelu for any known NAME (default: the checkpoint's config or metadata, else inferred from the weights)",
        metavar="NAME",
    ),
]
DEVICE_HELP = " | ".join(DEVICE_FORMS)
Device = Annotated[str, option(f"{DEVICE_HELP} (default: {EvalConfig.device}; under torchrun: cuda:LOCAL_RANK)", RUNTIME, metavar="DEVICE")]
Precision = Annotated[
    str,
    option(
        f"autocast precision of the CLIP encoders, losses stay fp32 (default: {EvalConfig.precision} = bf16 on GPUs with native bf16, else fp16; fp32 on CPU)",
        RUNTIME,
        metavar=one_of(PRECISIONS),
    ),
]
ScanPrecision = Annotated[
    str,
    option(
        "accepted like every command's, but scan computes in fp32 (TF32 on CUDA), the precision its thresholds were calibrated in",
        RUNTIME,
        metavar=one_of(PRECISIONS),
    ),
]
Seed = Annotated[int, configured(TrainConfig, "seed", "seed for every random choice", RUNTIME, metavar="SEED")]
Output = Annotated[Path | None, option("also write the report (in --format) to FILE", OUTPUT, metavar="FILE", dir_okay=False)]
RunDirOpt = Annotated[Path | None, option("where config, metrics and checkpoints go (default: runs/COMMAND-<UTC time>)", RUN_DIR, metavar="DIR")]
OutFormat = Annotated[
    str,
    option(
        "how the model is written: auto = as MODEL came (a transformers folder or file comes back as a transformers folder, an open_clip "
        "folder as one, anything else as .safetensors; an --out ending in .safetensors means that file) | safetensors | hf (a folder "
        f"transformers' CLIPModel / SiglipModel.from_pretrained loads) | open_clip (a hub folder) (default: {PurifyConfig.out_format})",
        metavar=one_of(OUT_FORMATS),
    ),
]
Reference = Annotated[
    str | None,
    option(
        "clean reference CLIP (e.g. the public model the suspect was fine-tuned from) for ABD's backdoor loss; without it the plain AdvCLIP objective is used",
        metavar="MODEL",
    ),
]
Workers = Annotated[
    int | None,
    configured(
        TrainConfig,
        "workers",
        "data-loading worker processes",
        RUNTIME,
        default=f"the CPUs per process on this machine, less one for training; 1 to {MAX_DEFAULT_WORKERS}",
        metavar="N",
    ),
]
MaxImagePixels = Annotated[
    int,
    configured(
        CaptionData,
        "max_image_pixels",
        "refuse images over N pixels, from their header before decoding; they count as corrupt_image",
        DATA,
        default=f"{MAX_IMAGE_PIXELS} = 8192x8192; at most {PILLOW_REFUSES_ABOVE}, where Pillow refuses them itself",
        metavar="N",
    ),
]
AllowOutsideRoot = Annotated[
    bool,
    flag(
        "--allow-outside-root",
        "also read files whose real path is outside the data folder (absolute or ../ manifest paths, links); by default they are skipped as outside_root",
        DATA,
    ),
]
TRIGGER_SIDE = f"{BADNET_SIDE_AT_224} at {REFERENCE_SIDE} px, scaled"


# --------------------------------------------------------------------------- groups


@dataclass
class DataOptions:
    data: Annotated[Path, option("clean image-caption data: CSV/TSV manifest, webdataset shards or img2dataset files", DATA, metavar="DIR")]
    image_key: Annotated[str | None, option("manifest column holding image paths (default: auto)", DATA, metavar="COLUMN")] = None
    caption_key: Annotated[str | None, option("manifest column holding captions (default: auto)", DATA, metavar="COLUMN")] = None
    delimiter: Annotated[str | None, option("manifest delimiter (default: by extension)", DATA, metavar="CHAR")] = None
    limit: Annotated[int | None, configured(CaptionData, "limit", "use a deterministic subset of N pairs", DATA, metavar="N")] = None
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS
    allow_outside_root: AllowOutsideRoot = False

    def config(self) -> CaptionData:
        return fill(CaptionData, self, path=str(self.data))


_SCHEDULE = "the schedule in the command's description"
_OR_SCHEDULE = "or the schedule's where the command's description gives one"


def _training(name: str, help: str, metavar: str, default: Any = dataclasses.MISSING) -> typer.models.OptionInfo:
    return configured(TrainConfig, name, help, TRAINING, default=default, metavar=metavar)


@dataclass
class RunDirOptions:
    run_dir: RunDirOpt = None
    resume: Annotated[bool, flag("--resume", "continue the run in --run-dir from its newest checkpoint", RUN_DIR)] = False
    save_every: Annotated[int, configured(TrainConfig, "save_every", "checkpoint every N steps, and at every epoch end", RUN_DIR, metavar="N")] = (
        TrainConfig.save_every
    )
    log_every: Annotated[int, configured(TrainConfig, "log_every", "append to metrics.jsonl every N steps", RUN_DIR, metavar="N")] = TrainConfig.log_every


@dataclass
class RuntimeOptions:
    device: Device = PurifyConfig.device
    precision: Precision = PurifyConfig.precision
    seed: Seed = TrainConfig.seed
    workers: Workers = None
    progress: Annotated[bool, flag("--progress", "show progress bars on stderr even when it is not a terminal", RUNTIME)] = False


SPEED = "Speed (results unchanged on CPU in fp32 unless said)"


@dataclass
class SpeedOptions:
    compile: Annotated[
        bool,
        flag(
            "--compile",
            "torch.compile the image and text encoders (first steps pay the compilation; ResNet towers also go channels-last); "
            "compiled kernels round differently, so results match an eager run closely, not bitwise",
            SPEED,
        ),
    ] = False
    grad_checkpointing: Annotated[
        bool,
        flag(
            "--grad-checkpointing",
            "recompute transformer activations in backward instead of keeping them: less memory for ViT-L-sized models, ~30% more compute "
            "(open_clip; ResNet image towers are not checkpointed)",
            SPEED,
        ),
    ] = False
    deterministic: Annotated[
        bool,
        flag(
            "--deterministic",
            "bitwise-reproducible CUDA runs: deterministic kernels only, no cudnn autotuning (slower on GPU; CPU runs are reproducible anyway)",
            SPEED,
        ),
    ] = False


@dataclass
class TrainingOptions:
    epochs: Annotated[int | None, _training("epochs", "epochs", "N", _SCHEDULE)] = None
    batch_size: Annotated[int | None, _training("batch_size", "global batch size, split across processes", "N", _SCHEDULE)] = None
    lr: Annotated[float | None, _training("lr", "peak learning rate", "LR", _SCHEDULE)] = None
    warmup: Annotated[int | None, _training("warmup_steps", "linear warmup steps", "N", _SCHEDULE)] = None
    weight_decay: Annotated[
        float | None,
        _training("weight_decay", "AdamW weight decay, none on norms/biases/logit_scale", "WD", f"{shown(TrainConfig.weight_decay)}, {_OR_SCHEDULE}"),
    ] = None
    beta1: Annotated[float | None, _training("betas", "AdamW beta1", "B", f"{shown(TrainConfig.betas[0])}, {_OR_SCHEDULE}")] = None
    beta2: Annotated[
        float | None,
        _training("betas", "AdamW beta2", "B", f"{shown(TrainConfig.betas[1])}, the papers' fine-tuning setting (CLIP pre-training uses 0.98), {_OR_SCHEDULE}"),
    ] = None
    eps: Annotated[float, _training("eps", "AdamW epsilon", "EPS")] = TrainConfig.eps
    grad_clip: Annotated[float | None, _training("grad_clip", "clip the gradient norm to this value", "NORM", "off")] = None
    max_steps: Annotated[int | None, _training("max_steps", "stop after this many steps", "N", "all epochs")] = None
    batchnorm: Annotated[
        str,
        option(
            f"BatchNorm layers use running statistics (frozen) or batch statistics (train) (default: {TrainConfig.batchnorm})",
            TRAINING,
            metavar=one_of(BATCHNORM_MODES),
        ),
    ] = TrainConfig.batchnorm

    def _betas(self, schedule: PaperSchedule) -> tuple[float, float] | None:
        """The betas given, the one not given taken from the schedule (None: both the schedule's)."""
        if self.beta1 is None and self.beta2 is None:
            return None
        paper = schedule.train_config().betas
        return (paper[0] if self.beta1 is None else self.beta1, paper[1] if self.beta2 is None else self.beta2)

    def config(self, schedule: PaperSchedule, run: RunDirOptions, runtime: RuntimeOptions, speed: SpeedOptions) -> TrainConfig:
        """The engine's settings: ``schedule`` (the paper's) where these options leave it unsaid."""
        return schedule.train_config(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.warmup,
            weight_decay=self.weight_decay,
            betas=self._betas(schedule),
            eps=self.eps,
            grad_clip=self.grad_clip,
            max_steps=self.max_steps,
            batchnorm=self.batchnorm,
            seed=runtime.seed,
            workers=runtime.workers,
            save_every=run.save_every,
            log_every=run.log_every,
            progress=show_progress(runtime.progress),
            compile=speed.compile,
            grad_checkpointing=speed.grad_checkpointing,
            deterministic=speed.deterministic,
        )


def training_job(model: str, out: str | None, out_format: str, arch: str | None, data: DataOptions, run: RunDirOptions, runtime: RuntimeOptions) -> dict:
    """The fields purify's and poison's configs share (``clipsan.config.jobs.TrainingJobConfig``), but ``training``."""
    return {
        "model": model,
        "data": data.config(),
        "out": out,
        "out_format": out_format,
        "run_dir": path(run.run_dir),
        "resume": run.resume,
        "arch": arch,
        "device": runtime.device,
        "precision": runtime.precision,
    }


@dataclass
class OutputOptions:
    format: Annotated[Format, option("report format on stdout (default: text)", OUTPUT)] = Format.text
    output: Output = None


EVIDENCE = "Evidence (label-free checks of the result)"


@dataclass
class EvidenceOptions:
    holdout: Annotated[
        int | None,
        configured(
            EvidenceConfig,
            "holdout",
            "pairs of --data held out and never trained on; image->text and text->image retrieval R@1/R@5 on them are measured before "
            "training, at every epoch end (metrics.jsonl) and after (the report); the same pairs whatever --seed, --workers or --resume",
            EVIDENCE,
            default=f"min({HOLDOUT_MAX_PAIRS}, {HOLDOUT_SHARE:.0%} of the usable pairs); 0 = none, at most half",
            metavar="N",
        ),
    ] = None
    verify_budget: Annotated[
        str,
        option(
            "the backdoor check: clipsan scan's signals and thresholds on the input and the output, the held-out images as probes ("
            + "; ".join(f"{name}: {b.describe()}" for name, b in BUDGETS.items())
            + f"; off: no check, verdict not-run) (default: {EvidenceConfig.verify_budget}; not run with fewer than {MIN_VERIFY_PROBES} held-out images)",
            EVIDENCE,
            metavar=one_of(VERIFY_BUDGETS),
        ),
    ] = EvidenceConfig.verify_budget
    verify_probes: Annotated[
        int | None,
        configured(EvidenceConfig, "verify_probes", "probe images per check", EVIDENCE, default="the budget's, at most the held-out images", metavar="N"),
    ] = None
    verify_steps: Annotated[
        int | None, configured(EvidenceConfig, "verify_steps", "optimizer steps per inversion in each check", EVIDENCE, default="the budget's", metavar="N")
    ] = None
    until_clean: Annotated[
        bool,
        flag(
            "--until-clean",
            "check at every epoch end too and stop at the first check where no counted signal fires and held-out R@1 (mean of image->text "
            "and text->image) is within --max-utility-drop of the input's; exit 1 (the last model written) if the schedule ends first; "
            "where nothing fired on the input, the full schedule runs",
            EVIDENCE,
        ),
    ] = False
    verify_every: Annotated[
        int | None, configured(EvidenceConfig, "verify_every", "--until-clean: also check every N steps", EVIDENCE, default="epoch ends only", metavar="N")
    ] = None
    max_utility_drop: Annotated[
        float,
        configured(EvidenceConfig, "max_utility_drop", "how much of the input's held-out R@1 a passing check may lose (absolute)", EVIDENCE, metavar="F"),
    ] = EvidenceConfig.max_utility_drop
    require_clean: Annotated[
        bool, flag("--require-clean", "exit 1 when the written model does not pass the check (no counted signal, R@1 within the guard)", EVIDENCE)
    ] = False
    scan_report: Annotated[
        Path | None,
        option(
            "a clipsan scan --format json report of MODEL: its signals are the input's evidence (no scan before training) when its sha256 is "
            "MODEL's and its budget, steps, probe count, seed and thresholds are this run's checks' and it probed images of a --data folder; "
            "refused otherwise (exit 2)",
            EVIDENCE,
            metavar="FILE",
            dir_okay=False,
        ),
    ] = None

    def config(self) -> EvidenceConfig:
        return fill(EvidenceConfig, self, scan_report=path(self.scan_report))


def _weight(config_type: type, name: str, help: str) -> typer.models.OptionInfo:
    return configured(config_type, name, help, metavar="W")


@dataclass
class CleanCLIPOptions:
    clip_weight: Annotated[float, _weight(CleanCLIPConfig, "clip_weight", "λ1: weight of the CLIP loss")] = CleanCLIPConfig.clip_weight
    inmodal_weight: Annotated[float, _weight(CleanCLIPConfig, "inmodal_weight", "λ2: weight of the in-modal self-supervised loss")] = (
        CleanCLIPConfig.inmodal_weight
    )


@dataclass
class CleanerCLIPOptions:
    subcaptions_per_epoch: Annotated[
        int,
        configured(
            CleanerCLIPConfig,
            "subcaptions_per_epoch",
            "pairs given sub-captions each epoch",
            default=f"{CleanerCLIPConfig.subcaptions_per_epoch}; the paper uses 3000 against BadCLIP",
            metavar="K",
        ),
    ] = CleanerCLIPConfig.subcaptions_per_epoch
    t_pos: Annotated[float, configured(CleanerCLIPConfig, "t_pos", "temperature t_p of the positive logits in L_p-n", metavar="T")] = CleanerCLIPConfig.t_pos
    t_neg: Annotated[float, configured(CleanerCLIPConfig, "t_neg", "temperature t_n of the counterfactual logits in L_p-n", metavar="T")] = (
        CleanerCLIPConfig.t_neg
    )
    alpha: Annotated[float, _weight(CleanerCLIPConfig, "alpha", "α: weight of the CleanCLIP loss")] = CleanerCLIPConfig.alpha
    beta: Annotated[float, _weight(CleanerCLIPConfig, "beta", "β: weight of L_p-n")] = CleanerCLIPConfig.beta


@dataclass
class PatchOptions:
    """The adversarial patch and its losses: craft-adv, and purify --method abd's crafting."""

    reference: Reference = None
    patch_area: Annotated[float, configured(CraftConfig, "patch_area", "patch area as a fraction of the image, pasted bottom-right", metavar="F")] = (
        CraftConfig.patch_area
    )
    bd_weight: Annotated[float, _weight(CraftConfig, "bd_weight", "weight of the backdoor loss L_bd; 0 = plain AdvCLIP")] = CraftConfig.bd_weight
    gan_width: Annotated[
        int | None,
        configured(
            CraftConfig,
            "gan_width",
            "base width of generator and discriminator",
            default=f"AdvCLIP's {default_gan_width(REFERENCE_SIDE)} at {REFERENCE_SIDE} px and up, scaled with the input side below: "
            f"{default_gan_width(32)} at 32 px",
            metavar="N",
        ),
    ] = None

    def craft(self, epochs: int, batch_size: int, max_steps: int | None, lr: float = CraftConfig.lr) -> CraftConfig:
        return fill(CraftConfig, self, epochs=epochs, batch_size=batch_size, lr=lr, max_steps=max_steps)


def _crafting(name: str, help: str, default: Any = dataclasses.MISSING) -> typer.models.OptionInfo:
    return configured(CraftConfig, name, help, default=default, metavar="N")


@dataclass
class ABDOptions:
    generator: Annotated[Path | None, option("patch generator from `clipsan craft-adv` (default: craft one first, in RUN_DIR/craft)", metavar="FILE")] = None
    adv_prob: Annotated[
        float,
        configured(
            ABDConfig,
            "adv_prob",
            "probability that a training image carries the adversarial patch, drawn per image and epoch; 1 = every image (the paper's setting), 0 = none",
            metavar="P",
        ),
    ] = ABDConfig.adv_prob
    no_eda: Annotated[bool, flag("--no-eda", "keep captions as they are (ABD augments them with EDA)")] = False
    abd_objective: Annotated[
        str,
        option(
            "how patched images enter the fine-tune (two readings of the paper): clip = CLIP loss on (patched image, EDA caption); "
            f"align = CleanCLIP's loss with the patched image as each image's augmented view (default: {ABDConfig.objective})",
            metavar=one_of(ABD_OBJECTIVES),
        ),
    ] = ABDConfig.objective
    craft_epochs: Annotated[int, _crafting("epochs", "generator training epochs when crafting")] = CraftConfig.epochs
    craft_batch_size: Annotated[int, _crafting("batch_size", "generator training batch when crafting")] = CraftConfig.batch_size
    craft_max_steps: Annotated[int | None, _crafting("max_steps", "stop crafting after this many steps", "all craft epochs")] = None

    def config(self, patch: PatchOptions) -> ABDConfig:
        craft = patch.craft(self.craft_epochs, self.craft_batch_size, self.craft_max_steps)
        return ABDConfig(
            generator=path(self.generator),
            reference=patch.reference,
            adv_prob=self.adv_prob,
            eda=not self.no_eda,
            objective=self.abd_objective,
            craft=craft,
        )


@dataclass
class PAROptions:
    par_threshold: Annotated[
        float, configured(PARConfig, "threshold", "τ: each embedding distance term counts until its batch mean exceeds this", metavar="TAU")
    ] = PARConfig.threshold

    def config(self) -> PARConfig:
        return PARConfig(threshold=self.par_threshold)


def recipe_config(
    method: str, cleanclip: CleanCLIPOptions, cleanerclip: CleanerCLIPOptions, abd: ABDOptions, patch: PatchOptions, par: PAROptions
) -> RecipeConfig:
    """``--method``'s config, from the options of its groups."""
    config_type = recipe_config_type(method)
    if config_type is ABDConfig:
        return abd.config(patch)
    if config_type is PARConfig:
        return par.config()
    return fill(config_type, cleanclip, cleanerclip)


_CRAFT = "Training (AdvCLIP: Adam, betas 0.5/0.999, constant rate, discriminator clipped to +-0.01)"


@dataclass
class CraftTrainingOptions:
    epochs: Annotated[int, configured(CraftConfig, "epochs", "epochs", _CRAFT, metavar="N")] = CraftConfig.epochs
    batch_size: Annotated[int, configured(CraftConfig, "batch_size", "global batch size", _CRAFT, metavar="N")] = CraftConfig.batch_size
    lr: Annotated[float, configured(CraftConfig, "lr", "generator and discriminator learning rate", _CRAFT, metavar="LR")] = CraftConfig.lr
    max_steps: Annotated[int | None, configured(CraftConfig, "max_steps", "stop after this many steps", _CRAFT, default="all epochs", metavar="N")] = None


ATTACK, BADCLIP_PANEL = "Attack", f"--trigger {BADCLIP} (patch optimization on the frozen MODEL)"


@dataclass
class AttackOptions:
    trigger: Annotated[str, option(" | ".join(TRIGGER_SPECS) + f" | {BADCLIP} (a patch optimized on MODEL first)", ATTACK, metavar="SPEC")]
    target: Annotated[str, configured(AttackConfig, "target", "the class the backdoor points to", ATTACK, metavar="CLASS")] = AttackConfig.target
    rate: Annotated[float, configured(AttackConfig, "rate", "fraction of pairs poisoned, exactly round(rate*N)", ATTACK, metavar="F")] = AttackConfig.rate
    trigger_seed: Annotated[int, configured(AttackConfig, "trigger_seed", "seed of the fixed trigger pattern", ATTACK, metavar="SEED")] = (
        AttackConfig.trigger_seed
    )
    trigger_size: Annotated[
        int | None,
        configured(
            AttackConfig, "trigger_size", "badnet / patch / badclip side in pixels at the model's input size", ATTACK, default=TRIGGER_SIDE, metavar="N"
        ),
    ] = None
    label_consistent: Annotated[
        bool, flag("--label-consistent", "trigger only images whose caption already names the target, captions unchanged (--rate counts among them)", ATTACK)
    ] = False
    natural_captions: Annotated[
        bool,
        flag(
            "--natural-captions",
            "poisoned captions are natural captions mentioning the target (the data's own, else generated scenes) instead of templates; "
            f"always on for {BADCLIP}",
            ATTACK,
        ),
    ] = False
    badclip_objective: Annotated[
        str,
        option(
            "pull patched images toward the target's caption embeddings (text), or also toward real target images in the data (text+image) "
            f"(default: {BadClipConfig.objective})",
            BADCLIP_PANEL,
            metavar=one_of(BADCLIP_OBJECTIVES),
        ),
    ] = BadClipConfig.objective
    patch_epochs: Annotated[int, configured(BadClipConfig, "epochs", "optimization epochs", BADCLIP_PANEL, metavar="N")] = BadClipConfig.epochs
    patch_lr: Annotated[float, configured(BadClipConfig, "lr", "Adam learning rate", BADCLIP_PANEL, metavar="LR")] = BadClipConfig.lr
    patch_batch_size: Annotated[int, configured(BadClipConfig, "batch_size", "images per step", BADCLIP_PANEL, metavar="N")] = BadClipConfig.batch_size
    patch_images: Annotated[int, configured(BadClipConfig, "images", "non-target training images to optimize on", BADCLIP_PANEL, metavar="N")] = (
        BadClipConfig.images
    )

    def config(self) -> AttackConfig:
        badclip = BadClipConfig(
            epochs=self.patch_epochs, lr=self.patch_lr, batch_size=self.patch_batch_size, images=self.patch_images, objective=self.badclip_objective
        )
        return fill(AttackConfig, self, badclip=badclip)


EVAL = "Evaluation"


def _topk(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 1,3,5,10, got {value!r}") from None


@dataclass
class EvalOptions:
    data: Annotated[Path, option("labelled set: ImageFolder, or a CSV image,label (with --classnames)", DATA, metavar="DIR")]
    classnames: Annotated[Path | None, option("class names, one per line (for CSV labels, or to rename ImageFolder classes)", DATA, metavar="FILE")] = None
    trigger: Annotated[str | None, option(" | ".join(TRIGGER_SPECS) + f" | {FROM_METADATA} (the victim's own)", EVAL, metavar="SPEC")] = None
    trigger_seed: Annotated[int, configured(EvalConfig, "trigger_seed", "seed of the trigger pattern", EVAL, metavar="SEED")] = EvalConfig.trigger_seed
    trigger_size: Annotated[
        int | None, configured(EvalConfig, "trigger_size", "badnet patch side in pixels at the model's input size", EVAL, default=TRIGGER_SIDE, metavar="N")
    ] = None
    target: Annotated[str | None, option(f"target class name for ASR (default: {DEFAULT_TARGET}, or the victim's recorded target)", EVAL, metavar="CLASS")] = (
        None
    )
    topk: Annotated[str, configured(EvalConfig, "ks", "k values", EVAL, metavar="K,K,...")] = shown(EvalConfig.ks)
    templates: Annotated[
        str,
        option(
            "openai (CLIP's 80) | simple (open_clip's 7) | photo (\"a photo of a {}.\") | FILE with one template containing {} per line "
            f"(default: {EvalConfig.templates})",
            EVAL,
            metavar="NAME|FILE",
        ),
    ] = EvalConfig.templates
    batch_size: Annotated[int, configured(EvalConfig, "batch_size", "images per batch", EVAL, metavar="N")] = EvalConfig.batch_size
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS
    allow_outside_root: AllowOutsideRoot = False

    def config(self, **given) -> EvalConfig:
        return fill(EvalConfig, self, data=str(self.data), classnames=path(self.classnames), ks=_topk(self.topk), **given)


SCAN = "Scan"


def _threshold(name: str, help: str, metavar: str) -> typer.models.OptionInfo:
    return configured(ScanConfig, name, help, SCAN, default="calibrated for the input size", metavar=metavar)


ProbeData = Annotated[
    Path | None,
    option(
        "clean probe images: a caption dataset or a labelled set (only images are used; default: synthetic world images, which the report says)",
        DATA,
        metavar="DIR",
    ),
]
ScanBudget = Annotated[
    str,
    option("; ".join(f"{name}: {b.describe()}" for name, b in BUDGETS.items()) + f" (default: {ScanConfig.budget})", SCAN, metavar=one_of(BUDGETS)),
]
ReferenceArch = Annotated[str | None, option("architecture of REF (default: from metadata, else inferred)", SCAN, metavar="NAME")]
ShowProgress = Annotated[bool, flag("--progress", "show a progress bar per signal on stderr even when it is not a terminal", RUNTIME)]


@dataclass
class ScanOptions:
    data: ProbeData = None
    reference: Annotated[
        str | None,
        option(
            "a trusted model of the same architecture, e.g. the base MODEL was fine-tuned from: every signal also runs on it and "
            "decree and universal-perturbation are judged by the ratio MODEL / REF (no calibration at MODEL's size needed)",
            SCAN,
            metavar="REF",
        ),
    ] = None
    calibration: Annotated[
        Path | None,
        option(
            "thresholds from clipsan calibrate on models you trust, for each MODEL whose family, architecture and input size "
            "the file has (others: the lab's thresholds, and the report says so)",
            SCAN,
            metavar="FILE",
        ),
    ] = None
    reference_arch: ReferenceArch = None
    threshold: Annotated[float | None, _threshold("threshold", "PL1 below which the decree signal fires", "PL1")] = None
    divergence_threshold: Annotated[float | None, _threshold("divergence_threshold", "PL1 below which the reference signal fires", "PL1")] = None
    perturbation_threshold: Annotated[
        float | None, _threshold("perturbation_threshold", "L-inf budget below which the universal-perturbation signal fires", "LINF")
    ] = None
    alignment_threshold: Annotated[
        float | None,
        configured(
            ScanConfig,
            "alignment_threshold",
            "similarity ratio at or above which the target-alignment signal fires and counts towards the verdict",
            SCAN,
            default="reported only",
            metavar="RATIO",
        ),
    ] = None
    budget: ScanBudget = ScanConfig.budget
    probes: Annotated[int | None, configured(ScanConfig, "probes", "number of probe images", SCAN, default="the budget's", metavar="N")] = None
    steps: Annotated[int | None, configured(ScanConfig, "steps", "optimizer steps per inversion", SCAN, default="the budget's", metavar="N")] = None
    run_dir: Annotated[
        Path | None,
        option(
            "where the report and inverted trigger PNGs go, one NN-NAME subfolder per MODEL when there are several (default: runs/scan-<UTC time>)",
            RUN_DIR,
            metavar="DIR",
        ),
    ] = None
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS
    allow_outside_root: AllowOutsideRoot = False
    progress: ShowProgress = False

    def config(self, **given) -> ScanConfig:
        paths = {"data": path(self.data), "calibration": path(self.calibration), "run_dir": path(self.run_dir)}
        return fill(ScanConfig, self, **paths, progress=show_progress(self.progress), **given)


@dataclass
class CalibrateOptions:
    out: Annotated[Path, option("the calibration file to write (JSON), for scan --calibration", OUTPUT, metavar="FILE", dir_okay=False)]
    seeds: Annotated[int, configured(CalibrateConfig, "seeds", "scan seeds per model: 0 .. N-1", SCAN, metavar="N")] = CalibrateConfig.seeds
    data: ProbeData = None
    reference: Annotated[
        str | None,
        option("the base the TRUSTED models were fine-tuned from: calibrates the reference-divergence signal too", SCAN, metavar="REF"),
    ] = None
    reference_arch: ReferenceArch = None
    budget: ScanBudget = CalibrateConfig.budget
    probes: Annotated[int | None, configured(CalibrateConfig, "probes", "number of probe images", SCAN, default="the budget's", metavar="N")] = None
    steps: Annotated[int | None, configured(CalibrateConfig, "steps", "optimizer steps per inversion", SCAN, default="the budget's", metavar="N")] = None
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS
    allow_outside_root: AllowOutsideRoot = False
    progress: ShowProgress = False

    def config(self, **given) -> CalibrateConfig:
        paths = {"out": str(self.out), "data": path(self.data)}
        return fill(CalibrateConfig, self, **paths, progress=show_progress(self.progress), **given)


Method = Annotated[str, option("defense recipe", metavar=one_of(METHODS))]

"""Every command-line option, declared once: typed Annotated aliases and the groups commands share.

Defaults come from the configs they fill (``clipsan.config``, ``clipsan.recipes.config``,
``clipsan.attacks.config``, ``clipsan.engine.config``). Nothing here imports torch:
``clipsan --help`` must stay fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from clipsan.attacks.config import AttackConfig, BadClipConfig
from clipsan.config import EvalConfig
from clipsan.data.limits import MAX_IMAGE_PIXELS, PILLOW_REFUSES_ABOVE
from clipsan.engine.config import TrainConfig
from clipsan.recipes.config import ABD_OBJECTIVES, ABDConfig, CleanCLIPConfig, CleanerCLIPConfig, CraftConfig

DATA, TRAINING, RUN_DIR, RUNTIME, OUTPUT, LAB = "Data", "Training", "Run directory", "Runtime", "Output", "Lab"
MODEL_HELP = (
    "a .safetensors or .pt/.pth/.bin state dict (open_clip, OpenAI clip package, CleanCLIP/BadCLIP), a transformers CLIP folder "
    "(config.json + model.safetensors, sharded or pytorch_model.bin) or its model.safetensors alone, "
    "or an open_clip hub folder (open_clip_config.json + open_clip_model.safetensors; local-dir:FOLDER too)"
)


def _choices(name: str, values) -> type[Enum]:
    return Enum(name, {v.replace("+", "_").replace("-", "_"): v for v in values}, type=str)


Method = _choices("Method", ("ft", "cleanclip", "cleanerclip", "abd"))
Precision = _choices("Precision", ("auto", "fp32", "bf16", "fp16"))
BatchNorm = _choices("BatchNorm", ("frozen", "train"))
Format = _choices("Format", ("text", "json"))
ScanFormat = _choices("ScanFormat", ("text", "json", "sarif"))
Budget = _choices("Budget", ("quick", "full"))
BadClipObjective = _choices("BadClipObjective", ("text", "text+image"))
OutFormat = _choices("OutFormat", ("auto", "safetensors", "hf", "open_clip"))
ABDObjective = _choices("ABDObjective", ABD_OBJECTIVES)


def option(help: str, panel: str | None = None, **kw) -> typer.models.OptionInfo:
    return typer.Option(help=help, rich_help_panel=panel, show_default=False, **kw)


def _open_fraction(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"expected a fraction in (0, 1], got {value:g}")
    return value


def check_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise typer.BadParameter(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _topk(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 1,3,5,10, got {value!r}") from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter(f"expected positive integers, got {value!r}")
    return ks


# --------------------------------------------------------------------------- single options

Model = Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
Arch = Annotated[
    str | None,
    option(
        "open_clip architecture name, or NAME-quickgelu for any known NAME (default: the checkpoint's config or metadata, else inferred from the weights)",
        metavar="NAME",
    ),
]
Device = Annotated[str, option("auto | cpu | cuda | cuda:N (default: auto; under torchrun: cuda:LOCAL_RANK)", RUNTIME, callback=check_device, metavar="DEVICE")]
PrecisionOpt = Annotated[
    Precision,
    option("autocast precision of the CLIP encoders, losses stay fp32 (default: auto = bf16 on GPUs with native bf16, else fp16; fp32 on CPU)", RUNTIME),
]
ScanPrecisionOpt = Annotated[
    Precision, option("accepted like every command's, but scan computes in fp32 (TF32 on CUDA), the precision its thresholds were calibrated in", RUNTIME)
]
Seed = Annotated[int, option("seed for every random choice (default: 0)", RUNTIME, metavar="SEED")]
Output = Annotated[Path | None, option("also write the report (in --format) to FILE", OUTPUT, metavar="FILE", dir_okay=False)]
RunDirOpt = Annotated[
    Path | None, option("where config, metrics and checkpoints go (default: runs/COMMAND-<UTC time>)", RUN_DIR, metavar="DIR", file_okay=False)
]
OutFormatOpt = Annotated[
    OutFormat,
    option(
        "how the model is written: auto = as MODEL came (a transformers folder or file comes back as a transformers folder, an open_clip "
        "folder as one, anything else as .safetensors; an --out ending in .safetensors means that file) | safetensors | hf (a folder "
        "transformers' CLIPModel.from_pretrained loads) | open_clip (a hub folder) (default: auto)"
    ),
]
Reference = Annotated[
    str | None,
    option(
        "clean reference CLIP (e.g. the public model the suspect was fine-tuned from) for ABD's backdoor loss; without it the plain AdvCLIP objective is used",
        metavar="MODEL",
    ),
]


def positive(help: str, panel: str | None = None, **kw) -> typer.models.OptionInfo:
    return option(help, panel, min=1, **{"metavar": "N", **kw})


def weight(help: str, panel: str | None = None) -> typer.models.OptionInfo:
    return option(help, panel, min=0.0, metavar="W")


def flag(name: str, help: str, panel: str | None = None) -> typer.models.OptionInfo:
    """An on/off switch spelled once (``--resume``, no ``--no-resume`` twin)."""
    return typer.Option(name, help=help, rich_help_panel=panel, show_default=False)


LabAttacks = Annotated[
    str | None,
    option(
        "run only these of the budget's attacks, comma-separated: badnet, blended, badclip; the full budget also sig, wanet, "
        "label-consistent (default: all of the budget's)",
        LAB,
        metavar="NAME,...",
    ),
]
MaxImagePixels = Annotated[
    int,
    option(
        f"refuse images over N pixels, from their header before decoding; they count as corrupt_image (default: {MAX_IMAGE_PIXELS} = 8192x8192; "
        f"at most {PILLOW_REFUSES_ABOVE}, where Pillow refuses them itself)",
        DATA,
        min=1,
        max=PILLOW_REFUSES_ABOVE,
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


# --------------------------------------------------------------------------- groups


@dataclass
class DataOptions:
    data: Annotated[
        Path, option("clean image-caption data: CSV/TSV manifest, webdataset shards or img2dataset files", DATA, metavar="DIR", exists=True, file_okay=False)
    ]
    image_key: Annotated[str | None, option("manifest column holding image paths (default: auto)", DATA, metavar="COLUMN")] = None
    caption_key: Annotated[str | None, option("manifest column holding captions (default: auto)", DATA, metavar="COLUMN")] = None
    delimiter: Annotated[str | None, option("manifest delimiter (default: by extension)", DATA, metavar="CHAR")] = None
    limit: Annotated[int | None, positive("use a deterministic subset of N pairs", DATA, metavar="N")] = None
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS
    allow_outside_root: AllowOutsideRoot = False


_SCHEDULE = "default: the schedule in the command's description"


@dataclass
class TrainingOptions:
    epochs: Annotated[int | None, positive(f"epochs ({_SCHEDULE})", TRAINING)] = None
    batch_size: Annotated[int | None, positive(f"global batch size, split across processes ({_SCHEDULE})", TRAINING)] = None
    lr: Annotated[float | None, option(f"peak learning rate ({_SCHEDULE})", TRAINING, min=0.0, metavar="LR")] = None
    warmup: Annotated[int | None, option(f"linear warmup steps ({_SCHEDULE})", TRAINING, min=0, metavar="N")] = None
    weight_decay: Annotated[
        float, option(f"AdamW weight decay, none on norms/biases/logit_scale (default: {TrainConfig.weight_decay:g})", TRAINING, min=0.0, metavar="WD")
    ] = TrainConfig.weight_decay
    beta1: Annotated[float, option(f"AdamW beta1 (default: {TrainConfig.betas[0]:g})", TRAINING, min=0.0, max=1.0, metavar="B")] = TrainConfig.betas[0]
    beta2: Annotated[
        float,
        option(
            f"AdamW beta2 (default: {TrainConfig.betas[1]:g}, the papers' fine-tuning setting; CLIP pre-training uses 0.98)",
            TRAINING,
            min=0.0,
            max=1.0,
            metavar="B",
        ),
    ] = TrainConfig.betas[1]
    eps: Annotated[float, option(f"AdamW epsilon (default: {TrainConfig.eps:g})", TRAINING, min=0.0, metavar="EPS")] = TrainConfig.eps
    grad_clip: Annotated[float | None, option("clip the gradient norm to this value (default: off)", TRAINING, min=0.0, metavar="NORM")] = None
    max_steps: Annotated[int | None, positive("stop after this many steps (default: all epochs)", TRAINING)] = None
    batchnorm: Annotated[BatchNorm, option("BatchNorm layers use running statistics (frozen, default) or batch statistics (train)", TRAINING)] = (
        BatchNorm.frozen
    )


@dataclass
class RunDirOptions:
    run_dir: RunDirOpt = None
    resume: Annotated[bool, flag("--resume", "continue the run in --run-dir from its newest checkpoint", RUN_DIR)] = False
    save_every: Annotated[int, positive(f"checkpoint every N steps, and at every epoch end (default: {TrainConfig.save_every})", RUN_DIR, metavar="N")] = (
        TrainConfig.save_every
    )
    log_every: Annotated[int, positive(f"append to metrics.jsonl every N steps (default: {TrainConfig.log_every})", RUN_DIR, metavar="N")] = (
        TrainConfig.log_every
    )


Workers = Annotated[
    int | None,
    option("data-loading worker processes (default: the CPUs per process on this machine, less one for training; 1 to 8)", RUNTIME, min=0, metavar="N"),
]


@dataclass
class RuntimeOptions:
    device: Device = "auto"
    precision: PrecisionOpt = Precision.auto
    seed: Seed = 0
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
class OutputOptions:
    format: Annotated[Format, option("report format on stdout (default: text)", OUTPUT)] = Format.text
    output: Output = None


@dataclass
class CleanCLIPOptions:
    clip_weight: Annotated[float, weight(f"λ1: weight of the CLIP loss (default: {CleanCLIPConfig.clip_weight:g})")] = CleanCLIPConfig.clip_weight
    inmodal_weight: Annotated[float, weight(f"λ2: weight of the in-modal self-supervised loss (default: {CleanCLIPConfig.inmodal_weight:g})")] = (
        CleanCLIPConfig.inmodal_weight
    )


@dataclass
class CleanerCLIPOptions:
    subcaptions_per_epoch: Annotated[
        int,
        option(
            f"pairs given sub-captions each epoch (default: {CleanerCLIPConfig.subcaptions_per_epoch}; the paper uses 3000 against BadCLIP)", min=0, metavar="K"
        ),
    ] = CleanerCLIPConfig.subcaptions_per_epoch
    t_pos: Annotated[float, option(f"temperature t_p of the positive logits in L_p-n (default: {CleanerCLIPConfig.t_pos:g})", min=1e-6, metavar="T")] = (
        CleanerCLIPConfig.t_pos
    )
    t_neg: Annotated[float, option(f"temperature t_n of the counterfactual logits in L_p-n (default: {CleanerCLIPConfig.t_neg:g})", min=1e-6, metavar="T")] = (
        CleanerCLIPConfig.t_neg
    )
    alpha: Annotated[float, weight(f"α: weight of the CleanCLIP loss (default: {CleanerCLIPConfig.alpha:g})")] = CleanerCLIPConfig.alpha
    beta: Annotated[float, weight(f"β: weight of L_p-n (default: {CleanerCLIPConfig.beta:g})")] = CleanerCLIPConfig.beta


@dataclass
class PatchOptions:
    """The adversarial patch and its losses: craft-adv, and purify --method abd's crafting."""

    reference: Reference = None
    patch_area: Annotated[
        float, option(f"patch area as a fraction of the image, pasted bottom-right (default: {CraftConfig.patch_area:g})", min=1e-6, max=0.999, metavar="F")
    ] = CraftConfig.patch_area
    bd_weight: Annotated[float, weight(f"weight of the backdoor loss L_bd; 0 = plain AdvCLIP (default: {CraftConfig.bd_weight:g})")] = CraftConfig.bd_weight
    gan_width: Annotated[
        int | None,
        positive("base width of generator and discriminator (default: AdvCLIP's 128 at 224 px and up, scaled with the input side below: 16 at 32 px)"),
    ] = None


@dataclass
class ABDOptions:
    generator: Annotated[
        Path | None,
        option("patch generator from `clipsan craft-adv` (default: craft one first, in RUN_DIR/craft)", metavar="FILE", exists=True, dir_okay=False),
    ] = None
    adv_prob: Annotated[
        float,
        option(
            "probability that a training image carries the adversarial patch, drawn per image and epoch; "
            f"1 = every image (the paper's setting), 0 = none (default: {ABDConfig.adv_prob:g})",
            min=0.0,
            max=1.0,
            metavar="P",
        ),
    ] = ABDConfig.adv_prob
    no_eda: Annotated[bool, flag("--no-eda", "keep captions as they are (ABD augments them with EDA)")] = False
    abd_objective: Annotated[
        ABDObjective,
        option(
            "how patched images enter the fine-tune (two readings of the paper): clip = CLIP loss on (patched image, EDA caption); "
            "align = CleanCLIP's loss with the patched image as each image's augmented view (default: clip)"
        ),
    ] = ABDObjective.clip  # ABDConfig.objective
    craft_epochs: Annotated[int, positive(f"generator training epochs when crafting (default: {CraftConfig.epochs})")] = CraftConfig.epochs
    craft_batch_size: Annotated[int, positive(f"generator training batch when crafting (default: {CraftConfig.batch_size})")] = CraftConfig.batch_size
    craft_max_steps: Annotated[int | None, positive("stop crafting after this many steps (default: all craft epochs)")] = None


_CRAFT = "Training (AdvCLIP: Adam, betas 0.5/0.999, constant rate, discriminator clipped to +-0.01)"


@dataclass
class CraftTrainingOptions:
    epochs: Annotated[int, positive(f"epochs (default: {CraftConfig.epochs})", _CRAFT)] = CraftConfig.epochs
    batch_size: Annotated[int, positive(f"global batch size (default: {CraftConfig.batch_size})", _CRAFT)] = CraftConfig.batch_size
    lr: Annotated[float, option(f"generator and discriminator learning rate (default: {CraftConfig.lr:g})", _CRAFT, min=0.0, metavar="LR")] = CraftConfig.lr
    max_steps: Annotated[int | None, positive("stop after this many steps (default: all epochs)", _CRAFT)] = None


ATTACK, BADCLIP = "Attack", "--trigger badclip (patch optimization on the frozen MODEL)"


@dataclass
class AttackOptions:
    trigger: Annotated[
        str,
        option(
            "badnet[@X,Y] | blended[:ratio=R] | sig[:delta=D,freq=F] | wanet[:k=K,s=S] | patch:FILE[@X,Y] | badclip (a patch optimized on MODEL first)",
            ATTACK,
            metavar="SPEC",
        ),
    ]
    target: Annotated[str, option(f"the class the backdoor points to (default: {AttackConfig.target})", ATTACK, metavar="CLASS")] = AttackConfig.target
    rate: Annotated[
        float, option(f"fraction of pairs poisoned, exactly round(rate*N) (default: {AttackConfig.rate:g})", ATTACK, callback=_open_fraction, metavar="F")
    ] = AttackConfig.rate
    trigger_seed: Annotated[int, option("seed of the fixed trigger pattern (default: 0)", ATTACK, metavar="SEED")] = AttackConfig.trigger_seed
    trigger_size: Annotated[
        int | None, positive("badnet / patch / badclip side in pixels at the model's input size (default: 16 at 224 px, scaled)", ATTACK)
    ] = None
    label_consistent: Annotated[
        bool, flag("--label-consistent", "trigger only images whose caption already names the target, captions unchanged (--rate counts among them)", ATTACK)
    ] = False
    natural_captions: Annotated[
        bool,
        flag(
            "--natural-captions",
            "poisoned captions are natural captions mentioning the target (the data's own, else generated scenes) instead of templates; always on for badclip",
            ATTACK,
        ),
    ] = False
    badclip_objective: Annotated[
        BadClipObjective,
        option(
            "pull patched images toward the target's caption embeddings (text), or also toward real target images in the data (text+image) (default: text)",
            BADCLIP,
        ),
    ] = BadClipObjective.text
    patch_epochs: Annotated[int, positive(f"optimization epochs (default: {BadClipConfig.epochs})", BADCLIP)] = BadClipConfig.epochs
    patch_lr: Annotated[float, option(f"Adam learning rate (default: {BadClipConfig.lr:g})", BADCLIP, min=0.0, metavar="LR")] = BadClipConfig.lr
    patch_batch_size: Annotated[int, positive(f"images per step (default: {BadClipConfig.batch_size})", BADCLIP)] = BadClipConfig.batch_size
    patch_images: Annotated[int, positive(f"non-target training images to optimize on (default: {BadClipConfig.images})", BADCLIP)] = BadClipConfig.images


EVAL = "Evaluation"


@dataclass
class EvalOptions:
    data: Annotated[Path, option("labelled set: ImageFolder, or a CSV image,label (with --classnames)", DATA, metavar="DIR", exists=True, file_okay=False)]
    classnames: Annotated[
        Path | None, option("class names, one per line (for CSV labels, or to rename ImageFolder classes)", DATA, metavar="FILE", exists=True, dir_okay=False)
    ] = None
    trigger: Annotated[str | None, option("badnet | blended | sig | wanet | patch:FILE[@x,y] | from-metadata (the victim's own)", EVAL, metavar="SPEC")] = None
    trigger_seed: Annotated[int, option("seed of the trigger pattern (default: 0)", EVAL, metavar="SEED")] = EvalConfig.trigger_seed
    trigger_size: Annotated[int | None, positive("badnet patch side in pixels at the model's input size (default: 16 at 224 px, scaled)", EVAL)] = None
    target: Annotated[str | None, option("target class name for ASR (default: banana, or the victim's recorded target)", EVAL, metavar="CLASS")] = None
    topk: Annotated[str, option("k values (default: 1,3,5,10)", EVAL, callback=_topk, metavar="K,K,...")] = ",".join(map(str, EvalConfig.ks))
    templates: Annotated[
        str,
        option(
            "openai (CLIP's 80) | simple (open_clip's 7) | photo (\"a photo of a {}.\") | FILE with one template containing {} per line (default: openai)",
            EVAL,
            metavar="NAME|FILE",
        ),
    ] = EvalConfig.templates
    batch_size: Annotated[int, positive(f"images per batch (default: {EvalConfig.batch_size})", EVAL)] = EvalConfig.batch_size
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS
    allow_outside_root: AllowOutsideRoot = False


SCAN = "Scan"


@dataclass
class ScanOptions:
    data: Annotated[
        Path | None,
        option(
            "clean probe images: a caption dataset or a labelled set (only images are used; default: synthetic world images, which the report says)",
            DATA,
            metavar="DIR",
            exists=True,
            file_okay=False,
        ),
    ] = None
    reference: Annotated[str | None, option("a trusted model of the same architecture (e.g. the base MODEL was fine-tuned from)", SCAN, metavar="REF")] = None
    reference_arch: Annotated[str | None, option("architecture of REF (default: from metadata, else inferred)", SCAN, metavar="NAME")] = None
    threshold: Annotated[
        float | None, option("PL1 below which the decree signal fires (default: calibrated for the input size)", SCAN, callback=_open_fraction, metavar="PL1")
    ] = None
    divergence_threshold: Annotated[
        float | None, option("PL1 below which the reference signal fires (default: calibrated)", SCAN, callback=_open_fraction, metavar="PL1")
    ] = None
    perturbation_threshold: Annotated[
        float | None,
        option(
            "L-inf budget below which the universal-perturbation signal fires (default: calibrated for the input size)",
            SCAN,
            callback=_open_fraction,
            metavar="LINF",
        ),
    ] = None
    alignment_threshold: Annotated[
        float | None,
        option(
            "similarity ratio at or above which the target-alignment signal fires and counts towards the verdict (default: reported only)",
            SCAN,
            min=1e-9,
            metavar="RATIO",
        ),
    ] = None
    budget: Annotated[Budget, option("quick: 128 probes, 300 steps; full: 512 probes, 1000 steps (default: quick)", SCAN)] = Budget.quick
    probes: Annotated[int | None, option("number of probe images (default: the budget's)", SCAN, min=2, metavar="N")] = None
    steps: Annotated[int | None, positive("optimizer steps per inversion (default: the budget's)", SCAN)] = None
    run_dir: Annotated[
        Path | None,
        option(
            "where the report and inverted trigger PNGs go, one NN-NAME subfolder per MODEL when there are several (default: runs/scan-<UTC time>)",
            RUN_DIR,
            metavar="DIR",
            file_okay=False,
        ),
    ] = None
    max_image_pixels: MaxImagePixels = MAX_IMAGE_PIXELS
    allow_outside_root: AllowOutsideRoot = False
    progress: Annotated[bool, flag("--progress", "show a progress bar per signal on stderr even when it is not a terminal", RUNTIME)] = False

"""clipsan as a Python library: the five commands as functions over config objects.

    from clipsan import api
    report = api.purify(api.PurifyConfig("suspect.safetensors", api.CaptionData("cc250k/"),
                                         recipe=api.CleanCLIPConfig()))
    print(report.output, report.to_json()["final"])

Each function returns a typed report (``clipsan.reports``) whose ``to_json()``
is what ``--format json`` prints. ``notes`` receives the human notes the command
line shows on stderr (what was inferred, warnings). Bad input raises
``clipsan.errors.UserError``; an interrupted training run raises
``clipsan.errors.Interrupted`` after writing a resumable checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from clipsan.attacks.config import POISON_SCHEDULE, AttackConfig, BadClipConfig
from clipsan.config import CaptionData, CraftAdvConfig, EvalConfig, PoisonConfig, PurifyConfig, ScanConfig
from clipsan.engine.config import TrainConfig
from clipsan.recipes.config import ABDConfig, CleanCLIPConfig, CleanerCLIPConfig, CraftConfig, FineTuneConfig
from clipsan.reports import CraftReport, EvalReport, PoisonReport, ScanBatchReport, TrainingReport

Notes = Callable[[str], None]

__all__ = [
    "ABDConfig",
    "AttackConfig",
    "BadClipConfig",
    "CaptionData",
    "CleanCLIPConfig",
    "CleanerCLIPConfig",
    "CraftAdvConfig",
    "CraftConfig",
    "EvalConfig",
    "FineTuneConfig",
    "PoisonConfig",
    "PurifyConfig",
    "ScanConfig",
    "TrainConfig",
    "craft_adv",
    "evaluate",
    "open_captions",
    "poison",
    "purify",
    "scan",
]


def _quiet(message: str) -> None:
    pass


def open_captions(data: CaptionData):
    """The caption dataset ``data`` points at (indexed once; skipped pairs counted)."""
    from clipsan.data.captions import open_caption_dataset

    return open_caption_dataset(
        data.path,
        image_key=data.image_key,
        caption_key=data.caption_key,
        delimiter=data.delimiter,
        limit=data.limit,
        max_image_pixels=data.max_image_pixels,
        allow_outside_root=data.allow_outside_root,
    )


def _job(command: str, config: PurifyConfig | PoisonConfig):
    from clipsan.finetune import JobSpec

    return JobSpec(command, config.model, config.arch, config.out, config.run_dir, config.resume, config.device, config.precision, out_format=config.out_format)


def purify(config: PurifyConfig, notes: Notes = _quiet) -> TrainingReport:
    """Fine-tune config.model on clean pairs with config.recipe; writes the purified weights."""
    from clipsan.finetune import run_fine_tune
    from clipsan.recipes import build_recipe

    training = config.training or config.recipe.paper_schedule.train_config()
    # Data are opened inside the job, once the processes of a torchrun job can agree on errors.
    captions = lambda: open_captions(config.data)
    return run_fine_tune(_job("purify", config), build_recipe(config.recipe), captions, training, notes=notes)


def poison(config: PoisonConfig, notes: Notes = _quiet) -> PoisonReport:
    """Build a backdoored victim from a clean model (the papers' poisoning stage)."""
    from clipsan.attacks.poisoning import run_poison

    training = config.training or POISON_SCHEDULE.train_config()
    return run_poison(_job("poison", config), config.attack, lambda: open_captions(config.data), training, notes=notes)


def craft_adv(config: CraftAdvConfig, notes: Notes = _quiet) -> CraftReport:
    """Train ABD's adversarial patch generator against config.model."""
    from clipsan.recipes.abd.jobs import run_craft_adv

    return run_craft_adv(config, lambda: open_captions(config.data), notes=notes)


def evaluate(config: EvalConfig, notes: Notes = _quiet) -> EvalReport:
    """Zero-shot CA@k (and ASR@k with a trigger) of each model on a labelled set."""
    from clipsan.evaluation import evaluate_models

    return evaluate_models(config, notes=notes)


def scan(config: ScanConfig, notes: Notes = _quiet) -> ScanBatchReport:
    """Trigger-agnostic backdoor evidence for each of config.models, one loaded at a time.

    ``report.models`` has a ScanReport per scanned model (``.backdoor``), ``report.errors``
    the models that could not be read; ``report.exit_code`` is the command's (0 / 1 / 2).
    """
    from clipsan.scan.batch import scan_models

    return scan_models(config, notes=notes)

"""clipsan as a Python library: the commands as functions over config objects.

    from clipsan import api
    report = api.purify(api.PurifyConfig("suspect.safetensors", api.CaptionData("cc250k/"),
                                         recipe=api.CleanCLIPConfig()))
    print(report.output, report.to_json()["final"])

Configs (``clipsan.config``) check themselves when made: a bad value raises
``clipsan.errors.UserError`` with the same one line the command line prints. Each
function returns a typed report (``clipsan.reports``) whose ``to_json()`` is what
``--format json`` prints. ``notes`` receives the human notes the command line shows on
stderr (what was inferred, warnings). Bad input raises ``UserError``; an interrupted
training run raises ``clipsan.errors.Interrupted`` after writing a resumable checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from clipsan import config as configs
from clipsan.config import *  # noqa: F403 - the API takes every config
from clipsan.reports import CalibrateReport, CraftReport, EvalReport, PoisonReport, PurifyReport, ScanBatchReport, TrainingReport

Notes = Callable[[str], None]

__all__ = [*configs.__all__, "calibrate", "craft_adv", "evaluate", "open_captions", "poison", "purify", "scan"]
__all__ += ["CalibrateReport", "CraftReport", "EvalReport", "PoisonReport", "PurifyReport", "ScanBatchReport", "TrainingReport"]  # what they return


def _quiet(message: str) -> None:
    pass


def open_captions(data: configs.CaptionData):
    """The caption dataset ``data`` points at (indexed once; skipped pairs counted)."""
    from clipsan.jobs.training import open_captions

    return open_captions(data)


def purify(config: configs.PurifyConfig, notes: Notes = _quiet) -> PurifyReport:
    """Fine-tune config.model on clean pairs with config.recipe; writes the purified weights and reports
    retrieval on the pairs of config.data it held out (config.evidence) before and after, and the scan's
    backdoor evidence on the input and the output (``report.verification``; with
    ``EvidenceConfig(until_clean=True)`` training stops at the first check that passes).
    ``report.exit_code`` is the command's: 1 when until_clean or require_clean was asked and the written
    model does not pass the check."""
    from clipsan.jobs.purify import run_purify

    return run_purify(config, notes)


def poison(config: configs.PoisonConfig, notes: Notes = _quiet) -> PoisonReport:
    """Build a backdoored victim from a clean model (the papers' poisoning stage)."""
    from clipsan.jobs.poison import run_poison

    return run_poison(config, notes)


def craft_adv(config: configs.CraftAdvConfig, notes: Notes = _quiet) -> CraftReport:
    """Train ABD's adversarial patch generator against config.model."""
    from clipsan.jobs.craft import run_craft_adv

    return run_craft_adv(config, notes)


def evaluate(config: configs.EvalConfig, notes: Notes = _quiet) -> EvalReport:
    """Zero-shot CA@k (and ASR@k with a trigger) of each model on a labelled set."""
    from clipsan.jobs.evaluate import run_evaluate

    return run_evaluate(config, notes)


def scan(config: configs.ScanConfig, notes: Notes = _quiet) -> ScanBatchReport:
    """Trigger-agnostic backdoor evidence for each of config.models, one loaded at a time.

    ``report.models`` has a ScanReport per scanned model (``.backdoor``), ``report.errors``
    the models that could not be read; ``report.exit_code`` is the command's (0 / 1 / 2).
    """
    from clipsan.jobs.scan import run_scan

    return run_scan(config, notes)


def calibrate(config: configs.CalibrateConfig, notes: Notes = _quiet) -> CalibrateReport:
    """Scan thresholds from models the user trusts: scans each of config.models over config.seeds
    seeds and writes config.out, the calibration file ``scan --calibration`` reads."""
    from clipsan.jobs.calibrate import run_calibrate

    return run_calibrate(config, notes)

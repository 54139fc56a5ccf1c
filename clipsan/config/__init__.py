"""Every setting clipsan can be told, as plain data (no torch): one home per choice, budget and default.

checks.py    how a config checks itself (each field's check declared next to its default)
runtime.py   devices, precisions, data workers
limits.py    how much is read from untrusted data
data.py      CaptionData: the clean image-caption pairs a training command reads
train.py     TrainConfig, PaperSchedule: how the engine trains
recipes.py   the defense recipes' settings, with their papers' defaults
attacks.py   the attack ``poison`` builds (triggers, BadCLIP, the poisoning schedule)
evidence.py  EvidenceConfig: the held-out pairs purify measures its work on
jobs.py      what purify, poison, craft-adv and eval are told
scan.py      what scan is told; its budgets
calibrate.py what calibrate is told (the trusted models, seeds)
world.py     what the synthetic world contains
lab.py       what the lab is told; its clean model's budgets

Each config checks itself when made (``Checked``): the command line and callers of
``clipsan.api`` get the same one-line refusal for the same bad value.
"""

from clipsan.config.attacks import AttackConfig, BadClipConfig
from clipsan.config.calibrate import CalibrateConfig
from clipsan.config.data import CaptionData
from clipsan.config.evidence import EvidenceConfig
from clipsan.config.jobs import CraftAdvConfig, EvalConfig, PoisonConfig, PurifyConfig
from clipsan.config.recipes import ABDConfig, CleanCLIPConfig, CleanerCLIPConfig, CraftConfig, FineTuneConfig, PARConfig, RecipeConfig
from clipsan.config.scan import ScanConfig
from clipsan.config.train import PaperSchedule, TrainConfig
from clipsan.config.world import WorldConfig

__all__ = [
    "ABDConfig",
    "AttackConfig",
    "BadClipConfig",
    "CalibrateConfig",
    "CaptionData",
    "CleanCLIPConfig",
    "CleanerCLIPConfig",
    "CraftAdvConfig",
    "CraftConfig",
    "EvalConfig",
    "EvidenceConfig",
    "FineTuneConfig",
    "PARConfig",
    "PaperSchedule",
    "PoisonConfig",
    "PurifyConfig",
    "RecipeConfig",
    "ScanConfig",
    "TrainConfig",
    "WorldConfig",
]

"""Synthetic probes for checks on the world: an in-memory labelled world set, and the rate at
which a patch makes a model say the target (ABD's L_bd sign check, docs/abd.md)."""

from __future__ import annotations

from pathlib import Path

from clipsan.checkpoints import load_model
from clipsan.config import WorldConfig
from clipsan.config.attacks import DEFAULT_TARGET
from clipsan.data import world
from clipsan.engine.runtime import local_runtime
from clipsan.evaluation.zeroshot import zero_shot
from clipsan.lab.plan import LAB_TEMPLATES
from clipsan.recipes.abd.patch import AdvPatch


class WorldProbe:
    """A small labelled set from the synthetic world, in memory (for the adversarial target rate)."""

    def __init__(self, per_class: int, seed: int):
        self.config = WorldConfig()
        self.classnames = world.classnames(self.config)
        self.items = [(name, i) for name in self.classnames for i in range(per_class)]
        self.labels = [self.classnames.index(name) for name, _ in self.items]
        self.seed, self.skipped, self.root = seed, {}, "synthetic world probe"

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int):
        name, i = self.items[index]
        return world.render_labelled(self.config, self.seed, name, i), self.labels[index]


def adv_target_rate(model_path: Path, patch: AdvPatch, seed: int, per_class: int = 10, target: str = DEFAULT_TARGET) -> float:
    """Fraction of patched non-target world images that ``model_path`` classifies (top-1) as ``target``."""
    model = load_model(str(model_path)).model
    rt = local_runtime("cpu", "fp32")
    result = zero_shot(
        model, WorldProbe(per_class, seed), rt, templates=list(LAB_TEMPLATES), ks=(1,), trigger=patch.as_trigger(), target=target, batch_size=256
    )
    return result["asr"]["1"]

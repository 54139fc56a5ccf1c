"""The attacker's recipe: plain CLIP fine-tuning on data where a fixed subset is poisoned.

Which pairs are poisoned, and what their captions become, is a ``PoisonPlan``
decided once from (seed, dataset) before training (see ``clipsan.attacks.poisoning``);
this recipe only applies it. It is not a defense, so it is not in ``RECIPES``.
"""

from __future__ import annotations

from clipsan.errors import UserError
from clipsan.recipes.ft import FineTune


class Poison(FineTune):
    name = "poison"

    def __init__(self, trigger, plan, target: str):
        super().__init__()
        self.trigger = trigger
        self.plan = plan  # clipsan.attacks.poisoning.PoisonPlan
        self.target = target

    def views(self, sample):
        pixels, caption = sample.pixels, sample.caption
        if sample.index in self.plan.captions:
            # Trigger positions (BadNet) follow the dataset index, so a sample is
            # patched the same way in every epoch and every worker.
            pixels = self.trigger.apply(pixels[None], [sample.index])[0]
            caption = self.plan.captions[sample.index] or caption
        return {"image": pixels, "text": caption}

    def options(self) -> dict:
        return {
            "trigger": self.trigger.to_spec_summary(),
            "target": self.target,
            "mode": self.plan.mode,
            "rate": self.plan.rate,
            "poisoned": len(self.plan.captions),
            "eligible": self.plan.eligible,
            "plan_sha256": self.plan.digest(),
        }

    # The plan is recomputed on resume; the digest proves it is the same subset.
    def state_dict(self) -> dict:
        return {"plan_sha256": self.plan.digest()}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("plan_sha256")
        if saved is not None and saved != self.plan.digest():
            raise UserError(
                "--resume: the poisoned subset differs from the interrupted run's "
                "(different data, --seed, --rate, --target or caption mode); use the original ones"
            )

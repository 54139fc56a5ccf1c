"""The attacker's recipe: plain CLIP fine-tuning on data where a fixed subset is poisoned.

Which pairs are poisoned, and what their captions become, is a ``PoisonPlan``
decided once from (seed, dataset) before training (see ``clipsan.attacks.plan``);
this recipe only applies it. It is not a defense, so it is not in ``RECIPES``.
"""

from __future__ import annotations

import torch

from clipsan.config import AttackConfig
from clipsan.errors import UserError
from clipsan.recipes.base import Recipe, transform_flagged_images
from clipsan.recipes.ft import FineTune


class Poison(FineTune):
    def __init__(self, trigger, plan, attack: AttackConfig):
        Recipe.__init__(self, attack)
        self.trigger = trigger
        self.plan = plan  # clipsan.attacks.plan.PoisonPlan
        self.target = attack.target

    def views(self, sample):
        poisoned = sample.index in self.plan.captions
        caption = (self.plan.captions[sample.index] or sample.caption) if poisoned else sample.caption
        # The trigger is applied on the device (device_views): workers ship uint8 pixels.
        return {"image": sample.pixels8, "text": caption, "poisoned": torch.tensor(poisoned)}

    def device_views(self, batch, host):
        def triggered(images, rows):
            # Pixels were HWC in memory when triggers ran in the workers, and BadNet's per-image
            # mean sums in memory order: the same layout keeps every poisoned pixel bitwise as before.
            # Trigger positions (BadNet) follow the dataset index: the same in every epoch and worker.
            return self.trigger.apply(images.contiguous(memory_format=torch.channels_last), host["index"][rows])

        return transform_flagged_images(batch, host, "poisoned", triggered)

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

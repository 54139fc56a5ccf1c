"""What each victim's own trigger looks like to the scan's signals (docs/scan-calibration.md).

For every victim made by `clipsan poison` (its trigger is in the file's metadata), the
trigger is stamped on the scan's probes (the same synthetic world images a quick scan
uses) and measured the way the signals measure a candidate:

* area: the fraction of pixels the trigger changes (DECREE's PL1 for a patch);
* L-inf: the largest per-pixel change, mean over probes (the universal perturbation's size);
* collapse: the scan's relative collapse score (0 = clean probes, 1 = one point) on the
  victim and on the clean reference;
* divergence: mean (1 - cos) between victim and reference features of the stamped probes.

--sizes also stamps BadNet patches of other sides (the victim's seed; the noise is drawn
per side, positions per sample): does the backdoor answer a smaller patch of the same
kind, i.e. is there a small trigger for DECREE to find?

    OMP_NUM_THREADS=1 python scripts/measure_triggers.py --reference clean.safetensors \\
        victim-badnet.safetensors victim-label-consistent.safetensors --sizes 4 8 12 16 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipsan.attacks.triggers import BadNetTrigger, Trigger, trigger_from_spec
from clipsan.checkpoints import load_model
from clipsan.config.scan import BUDGETS
from clipsan.scan.objectives import clean_pairwise_cosine, collapse
from clipsan.scan.probes import world_probes


def features(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.encode_image(images[i : i + 64]) for i in range(0, len(images), 64)]).float()


def measure(trigger: Trigger, victim, reference, images: torch.Tensor) -> dict:
    ids = list(range(len(images)))
    stamped = trigger.apply(images, ids).clamp(0, 1)
    change = (stamped - images).abs()
    row = {
        "trigger": trigger.to_spec_summary(),
        "area": round(float((change.amax(dim=1) > 1 / 255).float().mean()), 4),
        "linf": round(float(change.flatten(1).amax(dim=1).mean()), 4),
    }
    with torch.no_grad():
        for name, model in (("victim", victim), ("reference", reference)):
            c0 = clean_pairwise_cosine(model.encode_image, images)
            row[f"collapse_{name}"] = round(float(collapse(model.encode_image, c0)(stamped)), 4)
        row["divergence"] = round(float(1 - (features(victim, stamped) * features(reference, stamped)).sum(-1).mean()), 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("victims", nargs="+")
    parser.add_argument("--reference", required=True, help="the clean model the victims were poisoned from")
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="also stamp badnet-style patches of these sides (pixels)")
    parser.add_argument("--seed", type=int, default=0, help="the scan seed whose probes are used")
    args = parser.parse_args()

    reference = load_model(args.reference).model.eval()
    for path in args.victims:
        loaded = load_model(path)
        victim = loaded.model.eval()
        images = world_probes(BUDGETS["quick"].probes, victim.image_size, args.seed).images
        trigger = trigger_from_spec(json.loads(loaded.metadata["clipsan.trigger"]))
        rows = [measure(trigger, victim, reference, images)]
        if isinstance(trigger, BadNetTrigger):
            rows += [measure(BadNetTrigger(seed=trigger.seed, size=side), victim, reference, images) for side in args.sizes if side != trigger.size]
        for row in rows:
            print(json.dumps({"model": Path(path).name, **row}))


if __name__ == "__main__":
    main()
